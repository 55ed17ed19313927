"""Backend health and failover: the trio shell around the pure planner in ``pgbalancer.ha``.

``checker`` probes every backend with real connections, ``actions`` carries out what the planner
decides (pg_promote, re-pointing standbys, the operator's hooks, pg_rewind), and ``controller``
runs the rounds, feeds the proxy's cluster view and offers the operations (attach, detach, promote,
switchover, rejoin). Policy lives in ``pgbalancer.ha.planner``, never here.
"""
