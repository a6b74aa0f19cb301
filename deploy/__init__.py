"""Deployment: certificates, SuperLink/SuperNode processes by PID, the one-machine demo.

Nothing here is imported by the Flower apps; it is operator tooling around
``flower-superlink``, ``flower-supernode`` and ``flwr``.
"""
