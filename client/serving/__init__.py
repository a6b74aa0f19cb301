"""Serving a node's recommendations over gRPC (``fedrec.serving.v1``).

- ``recommend.proto``: the API; ``recommend_pb2*.py``: generated stubs
  (``python -m client.serving.regenerate``);
- ``source``: where the recommender comes from (run directory or deployment state);
- ``server``: the service, validation, health, TLS and hot reload;
- ``client``: a small Python client.

Importing this package imports no gRPC code; ``source`` works without grpcio.
"""
