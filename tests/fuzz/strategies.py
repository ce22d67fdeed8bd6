"""Hypothesis strategies for the fuzz suite: values of every msgpack type, shaped a little
like what the servers expect (ids, resource maps, small nested structures) so that handlers
get past their first lookups, and messages for one op with the fields its handler reads.

Safety, since the servers act on what they get: strings never contain ':' (so no value can
name a host and port to connect to), "address" fields only name loopback or nothing, an
"entrypoint" (a shell command) is only ever one of a few harmless commands, and pip installs
are kept offline by the cluster's environment (conftest.OFFLINE_ENV).
"""

from __future__ import annotations

import os
import tempfile

from hypothesis import strategies as st

# A path outside every directory a server writes to: after the fuzzing, nothing must be there.
ESCAPE_DIR = os.path.join(tempfile.gettempdir(), "orr-fuzz-escape")
ESCAPES = [ESCAPE_DIR, os.path.join(ESCAPE_DIR, "x"), "../../../../orr-fuzz-escape", "..", ".", "/"]

_text = st.text(st.characters(blacklist_characters=":", blacklist_categories=("Cs",)), max_size=24)
_ids = st.one_of(st.binary(min_size=16, max_size=16).map(bytes.hex), st.binary(min_size=20, max_size=20),
                 st.binary(min_size=4, max_size=4).map(bytes.hex))
_numbers = st.one_of(st.integers(-(2 ** 63), 2 ** 64 - 1), st.floats(allow_nan=True, allow_infinity=True),
                     st.sampled_from([0, 1, -1, 0.5, 2 ** 31, 1e300]))
_resources = st.dictionaries(st.sampled_from(["CPU", "GPU", "memory", "joined", "x", ""]),
                             st.one_of(_numbers, _text, st.none()), max_size=3)
_scalars = st.one_of(st.none(), st.booleans(), _numbers, _text, st.binary(max_size=40), _ids,
                     st.sampled_from(ESCAPES + ["driver", "worker", "node", "ALIVE", "DEAD", "RUNNING", "FINISHED",
                                                "SPREAD", "STRICT_PACK", "PACK", "task", "gcs"]))


def values() -> st.SearchStrategy:
    """Any msgpack value: scalars, and lists and maps of them, a few levels deep."""
    return st.recursive(st.one_of(_scalars, _resources),
                        lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                st.dictionaries(st.one_of(_text, st.integers(-5, 5)), inner,
                                                                max_size=4)),
                        max_leaves=8)


def _for_field(name: str) -> st.SearchStrategy:
    if name == "entrypoint":  # a shell command: only harmless ones, else a value of the wrong type
        return st.one_of(st.sampled_from(["true", "exit 3", "echo fuzz"]), st.none(), _numbers, st.lists(_text))
    if "address" in name:
        return st.one_of(st.sampled_from(["", "unix:/nonexistent/fuzz.sock", "tcp:127.0.0.1:1", "127.0.0.1:1"]),
                         st.none(), _numbers)
    return values()


def message(op: str, fields: set[str]) -> st.SearchStrategy:
    """A message for `op`: the fields its handler reads but for one or two, with values of any
    type, maybe other keys, a request id (or none: a one-way message)."""
    names = sorted(fields)
    known = st.fixed_dictionaries({f: _for_field(f) for f in names})
    dropped = st.sets(st.sampled_from(names), max_size=2) if names else st.just(set())
    extra = st.dictionaries(_text, values(), max_size=2)
    ids = st.one_of(st.integers(1, 2 ** 31), st.none(), values())

    def build(parts: tuple) -> dict:
        extra_part, known_part, drop, call_id = parts
        msg = {**extra_part, **{k: v for k, v in known_part.items() if k not in drop}, "op": op}
        msg.pop("_b", None)  # the framing's own key: buffers are given separately
        if call_id is None:
            msg.pop("id", None)
        else:
            msg["id"] = call_id
        return msg

    return st.tuples(extra, known, dropped, ids).map(build)


def buffers() -> st.SearchStrategy:
    return st.lists(st.binary(max_size=64), max_size=2)


def hello_info() -> st.SearchStrategy:
    """What a peer says about itself in its hello: servers keep it for the connection's life."""
    return st.one_of(st.just({"kind": "fuzz"}),
                     st.fixed_dictionaries({"kind": st.sampled_from(["driver", "worker", "node", "gcs", "fuzz"])},
                                           optional={"worker_id": st.one_of(_ids, values()), "node_id": _ids,
                                                     "job_id": st.one_of(_ids, values()),
                                                     "pid": _numbers, "address": _for_field("address")}))
