"""Valid Ray code never gets a TypeError from our API: every keyword Ray 2.60 accepts on the
public names of API.md is accepted here, positional parameters come in Ray's order, and nothing
Ray lets a caller leave out is required here.

Ray's signatures are read from tests/data/ray_signatures.json, written by
benchmarks/ray_signatures.py from a real Ray install (`make ray-signatures`)."""

from __future__ import annotations

import importlib.util
import inspect
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).parents[2]
DATA = json.loads((ROOT / "tests" / "data" / "ray_signatures.json").read_text())
# The dumper's name resolution, so that a dotted name means the same thing on both sides.
_spec = importlib.util.spec_from_file_location("ray_signatures", ROOT / "benchmarks" / "ray_signatures.py")
_dumper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_dumper)

# Public names of API.md that another issue builds (or rebuilds). Listed so that the test says
# which ones fall short, and fails once one matches Ray without being taken off this list.
NOT_BUILT: dict[str, str] = {}


def ours(ray_name: str) -> str:
    return "runtime" + ray_name[len("ray"):]


def resolve(dotted: str):
    try:
        return _dumper.resolve(dotted)
    except ImportError:
        raise LookupError(f"{dotted} does not exist") from None


def not_built(ray_name: str) -> str | None:
    """Why ray_name is listed in NOT_BUILT (a name, or a prefix ending in a dot)."""
    return next((why for key, why in NOT_BUILT.items()
                 if ray_name == key or (key.endswith(".") and ray_name.startswith(key))), None)


def signature_problems(ray_params: list[dict], fn) -> list[str]:
    """What valid Ray calls would fail on `fn`."""
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.name != "self"]
    by_name = {p.name: p for p in params}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    var_pos = any(p.kind is p.VAR_POSITIONAL for p in params)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    problems = []
    ray_positional = [p for p in ray_params if p["kind"] in ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD")]
    for i, rp in enumerate(ray_positional):
        if i >= len(positional) and not var_pos:
            problems.append(f"takes fewer positional arguments than Ray ({rp['name']!r} is Ray's #{i + 1})")
        elif i < len(positional) and rp["kind"] == "POSITIONAL_OR_KEYWORD" and positional[i].name != rp["name"]:
            problems.append(f"positional #{i + 1} is {positional[i].name!r}, Ray's is {rp['name']!r}")
    for rp in ray_params:
        if rp["kind"] == "VAR_POSITIONAL" and not var_pos:
            problems.append(f"has no *{rp['name']} as Ray has")
        elif rp["kind"] == "VAR_KEYWORD" and not var_kw:
            problems.append(f"has no **{rp['name']} as Ray has")
        elif rp["kind"] in ("KEYWORD_ONLY", "POSITIONAL_OR_KEYWORD"):
            p = by_name.get(rp["name"])
            if p is None or p.kind is p.POSITIONAL_ONLY:
                problems.append(f"does not take Ray's keyword {rp['name']!r}")
            elif p.default is p.empty and not rp["required"]:
                problems.append(f"requires {rp['name']!r}, which Ray lets a caller leave out")
    ray_names = {rp["name"] for rp in ray_params}
    for p in params:
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ray_names:
            problems.append(f"requires {p.name!r}, which Ray does not have")
    return problems


FUNCTIONS = sorted(DATA["functions"])


def problems_of(ray_name: str) -> list[str]:
    try:
        fn = resolve(ours(ray_name))
    except LookupError as e:
        return [str(e)]
    return [f"{ours(ray_name)}{inspect.signature(fn)}: {p}" for p in signature_problems(DATA["functions"][ray_name], fn)]


@pytest.mark.parametrize("ray_name", FUNCTIONS)
def test_signature_accepts_what_ray_accepts(ray_name):
    problems = problems_of(ray_name)
    why = not_built(ray_name)
    if why is not None:
        assert problems, f"{ours(ray_name)} now matches Ray: take it off NOT_BUILT"
        pytest.skip(f"{ours(ray_name)}: {why}")
    assert problems == []


@pytest.mark.parametrize("ray_name", DATA["names"])
def test_name_exists(ray_name):
    resolve(ours(ray_name))


def test_remote_and_options_accept_rays_option_names():
    from runtime._core import options
    assert set(DATA["options"]["task"]) - options.TASK_OPTIONS == set()
    assert set(DATA["options"]["actor"]) - options.ACTOR_OPTIONS == set()
    assert set(DATA["options"]["method_call"]) - options.METHOD_OPTIONS == set()
    assert set(DATA["options"]["method_decorator"]) - options.METHOD_OPTIONS == set()


def test_the_checker_finds_what_would_break():
    """The comparison itself: each kind of mismatch is reported."""
    ray = [{"name": "a", "kind": "POSITIONAL_OR_KEYWORD", "required": True},
           {"name": "b", "kind": "KEYWORD_ONLY", "required": False},
           {"name": "kw", "kind": "VAR_KEYWORD", "required": False}]

    def good(a, *, b=None, c=None, **kw): ...
    def swapped(x, *, a, b=None, **kw): ...
    def missing(a, **kw): ...
    def strict(a, *, b, **kw): ...
    def closed(a, *, b=None): ...
    assert signature_problems(ray, good) == []
    assert any("positional #1" in p for p in signature_problems(ray, swapped))
    assert signature_problems(ray, missing) == ["does not take Ray's keyword 'b'"]
    assert signature_problems(ray, strict) == ["requires 'b', which Ray lets a caller leave out"]
    assert signature_problems(ray, closed) == ["has no **kw as Ray has"]
