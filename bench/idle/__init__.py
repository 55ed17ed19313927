"""`bench/idle_clients`: pgbalancer and PgBouncer each holding 1,000 and 5,000 mostly idle client
connections, measured for the pooler's RSS per idle client and for pgbench TPS with the idle ones held.

`wire` and `report` are pure; `clients`, `pgbouncer`, `limits` and `cli` are the process shells.
The harness pieces (cluster scripts, pgbalancer start/stop, machine record) come from `compare`.
"""
