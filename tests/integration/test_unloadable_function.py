"""A task whose function refers to a module the workers cannot import fails with that error
(and what to do), instead of killing worker after worker until its retries run out."""

from __future__ import annotations

import sys
import types

import pytest

import runtime

pytestmark = pytest.mark.timeout(60)


def test_a_function_the_worker_cannot_load_fails_the_task_with_the_import_error(ray_start):
    # In sys.modules, so cloudpickle sends Helper by reference: the worker has to import it.
    only_here = types.ModuleType("module_only_in_the_driver")
    exec("class Helper:\n    value = 3\n", only_here.__dict__)
    sys.modules["module_only_in_the_driver"] = only_here
    try:
        Helper = only_here.Helper

        @runtime.remote
        def uses_helper():
            return Helper.value

        with pytest.raises(ModuleNotFoundError) as e:
            runtime.get(uses_helper.remote())
        assert "module_only_in_the_driver" in str(e.value)
        assert "could not load the function `" in str(e.value) and "uses_helper`" in str(e.value)
        # The worker lived: the next task runs on it.
        assert runtime.get(runtime.remote(lambda: 1).remote()) == 1
    finally:
        del sys.modules["module_only_in_the_driver"]
