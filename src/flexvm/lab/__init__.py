"""The lab: N libvirt hosts simulated on one machine, for tests, demos and multi-host features.

Each host is its own network, mount and UTS namespace running its own libvirtd (reachable at
``qemu+tcp://<address>/system`` from the root namespace); a lab switch namespace bridges them
and serves DHCP; guests bridge onto the switch, so their addresses survive live migration.

    lab = Lab(home / "lab")
    state = lab.up(LabSpec(hosts=2))      # state.hosts[0].uri, state.dhcp_hosts_dir, ...
    lab.status(); lab.stop_host("lab2"); lab.start_host("lab2")
    lab.down()                            # removes everything up made

Modules: ``model`` (the dataclasses), ``plan`` (addresses and names, pure), ``config``
(configuration text, pure), ``netns`` (ip), ``mountns`` (pinned mount/UTS namespaces),
``daemons`` (starting dnsmasq, virtlogd, libvirtd), ``processes`` (PIDs), ``guests`` (powering
guests off through libvirt), ``state`` (state.json), ``journal`` (what ``up`` made, to undo it
exactly if it fails), ``system`` (running programs, the one seam tests replace), ``lab`` (the
orchestration).
"""

from flexvm.lab.lab import Lab
from flexvm.lab.model import LabHost, LabSpec, LabState

__all__ = ["Lab", "LabHost", "LabSpec", "LabState"]
