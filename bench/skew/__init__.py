"""bench/routing_skew: the load-balancing algorithms on a cluster with one slow standby (issue 4)."""
