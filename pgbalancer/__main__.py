"""``python -m pgbalancer``: the same as the ``pgbalancer`` command."""

from pgbalancer.node import main

raise SystemExit(main())
