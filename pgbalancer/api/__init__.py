"""The REST API of a pgbalancer node: quart-trio on hypercorn, JWT auth, OpenAPI and Prometheus /metrics.

Modules, by role:

* :mod:`~pgbalancer.api.service`: ``ApiService``, served in the node's nursery;
* :mod:`~pgbalancer.api.app`: the routes, authentication, roles and JSON errors;
* :mod:`~pgbalancer.api.snapshots`: live proxy state read into JSON documents;
* :mod:`~pgbalancer.api.metrics`: the Prometheus collector;
* :mod:`~pgbalancer.api.openapi`: the OpenAPI 3.0 document;
* :mod:`~pgbalancer.api.users`, :mod:`~pgbalancer.api.tokens`, :mod:`~pgbalancer.api.ratelimit`,
  :mod:`~pgbalancer.api.settings`: API users and roles, JWTs, the failed-login limit, the API config;
* :mod:`~pgbalancer.api.control`: what the API needs from the node and the failover engine.

This package never imports the node (wiring is the top layer) and never touches the data path.
"""
