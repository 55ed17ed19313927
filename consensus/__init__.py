"""Replicated cluster state for the watchdog cluster (the only importer of pysyncobj).

Not built yet: the watchdog-cluster issue adds the Raft state machine and the
ClusterStore interface here. It must never import pgbalancer.proxy.
"""
