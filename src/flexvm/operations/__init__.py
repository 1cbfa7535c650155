"""The durable workflow engine: operations as persisted steps, leases, the leader (see engine.py)."""
