"""Images: the image store's files, the qemu-img wrapper and the cloud-init seed builder.

Only files live here. Recording images in the database belongs to ``store/``; this
package takes and returns ``flexvm.model.image.Image`` dataclasses.
"""
