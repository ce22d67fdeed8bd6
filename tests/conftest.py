"""Test configuration: the runtime's fixtures come from its shipped plugin.

`runtime._testing.pytest_plugin` provides the autouse leak check
(`orrery_leak_check`) and the `ray_start` / `shared_runtime` cluster fixtures.
"""

pytest_plugins = ["runtime._testing.pytest_plugin"]
