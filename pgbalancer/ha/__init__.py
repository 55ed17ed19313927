"""High availability, pure: the cluster view snapshot and the failover planner."""
