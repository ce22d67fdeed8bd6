from __future__ import annotations

import pytest

from runtime.config import SystemConfig


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ValueError, match="did you mean 'heartbeat_interval_s'"):
        SystemConfig.resolve({"hearbeat_interval_s": 1})


def test_environment_then_overrides():
    cfg = SystemConfig.resolve({"max_inline_bytes": 10}, environ={"RUNTIME_HEARTBEAT_INTERVAL_S": "0.5"})
    assert cfg.heartbeat_interval_s == 0.5 and cfg.max_inline_bytes == 10
    assert SystemConfig.from_json(cfg.to_json()) == cfg


def test_wrong_type_fails_loudly():
    with pytest.raises(ValueError, match="must be int"):
        SystemConfig.resolve({"max_inline_bytes": "lots"})
