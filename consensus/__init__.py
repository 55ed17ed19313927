"""Replicated cluster state for the watchdog cluster (the only importer of pysyncobj).

``consensus.state`` is the pure state machine; ``consensus.store.ClusterStore`` the interface the
rest of pgbalancer uses; ``consensus.memory.MemoryClusterStore`` its in-memory fake for unit tests;
``consensus.raft.RaftClusterStore`` the implementation on pysyncobj. This package must never import
pgbalancer (least of all pgbalancer.proxy): pgbalancer uses it only through ClusterStore.
"""

from consensus.memory import MemoryCluster, MemoryClusterStore
from consensus.state import BackendRecord, ClusterState, Invalidation, majority
from consensus.store import (
    ClusterStore,
    ConsensusError,
    LeaderChange,
    MemberStatus,
    NoQuorumError,
    RaftRole,
    WatchdogStatus,
)

__all__ = [
    "BackendRecord",
    "ClusterState",
    "ClusterStore",
    "ConsensusError",
    "Invalidation",
    "LeaderChange",
    "MemberStatus",
    "MemoryCluster",
    "MemoryClusterStore",
    "NoQuorumError",
    "RaftRole",
    "WatchdogStatus",
    "majority",
]
