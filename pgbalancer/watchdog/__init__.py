"""The watchdog cluster's trio shell: quorum failover, leases and status over consensus.ClusterStore.

``service.WatchdogService`` is what the node wires; ``decide`` holds its pure decisions. This package
must never import pysyncobj (only consensus does) and holds no policy the planner already has.
"""

from pgbalancer.watchdog.service import WatchdogService, WatchdogSetupError, resolve_self_address

__all__ = ["WatchdogService", "WatchdogSetupError", "resolve_self_address"]
