"""The built-in "tiny" test image: Debian's cloud kernel, our own small initramfs and a
busybox root disk that boots to a readiness line within seconds, even under TCG.

See ``build.py`` for how it is made and ``guest/`` for what runs inside.
"""

from flexvm.images.tiny.build import DebianKernel, TinyImage, build_tiny_image, find_debian_kernel

__all__ = ["DebianKernel", "TinyImage", "build_tiny_image", "find_debian_kernel"]
