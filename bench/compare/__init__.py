"""Side-by-side pgbench comparison of direct PostgreSQL, PgBouncer, Pgpool-II and pgbalancer.

The package drives the shared benchmark scripts (`shared/bench/*.sh`), it never re-implements them:
`results` and `pgbalancer_conf` are pure (text in, values out), `harness`, `proxy` and `machine`
run processes, and `cli` wires one run together. Nothing here is imported by pgbalancer itself,
and nothing here may import pgbalancer: the proxy is measured strictly from the outside.
"""
