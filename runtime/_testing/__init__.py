"""Shipped test harness: synchronisation helpers and pytest fixtures.

- `runtime._testing.sync`: `wait_for(...)` and the `SignalActor` class.
- `runtime._testing.pytest_plugin`: the leak check and the cluster fixtures
  (enabled with `pytest_plugins = ["runtime._testing.pytest_plugin"]`).
"""
