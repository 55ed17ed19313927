"""pgbalancer: a PostgreSQL connection pooler and adaptive load balancer on trio.

The package root only carries the version; every component lives in a subpackage
(see DESIGN.md §2 for the layering, which tests/unit/test_layering.py enforces).
"""

__version__ = "0.1.0"
