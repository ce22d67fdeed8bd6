"""A node asked for an object that its creator is still writing answers once it is sealed.

The creator's seal message (to its node manager) and its task reply (to the owner) travel
over different connections, so a reader on another node can ask the source node before
the seal arrives there. Answering "not here" then made the reader rebuild the object as
lost (tests/fault/test_partition.py hung on it now and then).
"""

import asyncio
import os

from runtime.node.object_store import ObjectStoreManager
from runtime.node.shm import object_path
from runtime.node.transfer import ObjectTransfer


def _store(tmp_path) -> tuple[ObjectStoreManager, ObjectTransfer]:
    store = ObjectStoreManager(str(tmp_path / "shm"), str(tmp_path / "spill"), 1 << 20)
    os.makedirs(store.shm_dir)
    return store, ObjectTransfer("n1", "t" * 32, store, peer=None)


def _write(store: ObjectStoreManager, oid: bytes) -> None:
    with open(object_path(store.shm_dir, oid), "wb") as f:
        f.write(b"x" * 100)


def test_object_info_waits_for_the_seal_of_an_object_being_written(tmp_path):
    store, transfer = _store(tmp_path)
    oid = b"a" * 20

    async def main():
        store.create(oid, 100, "owner")
        _write(store, oid)
        asked = asyncio.ensure_future(transfer.object_info(oid, "n2"))
        for _ in range(5):
            await asyncio.sleep(0)  # let the request run as far as it can without the seal
        assert not asked.done()
        store.seal(oid)
        return await asyncio.wait_for(asked, 5)

    info = asyncio.run(main())
    assert info["found"] and info["size"] == 100 and info["owner"] == "owner"


def test_object_info_answers_not_found_when_the_object_being_written_is_freed(tmp_path):
    store, transfer = _store(tmp_path)
    oid = b"b" * 20

    async def main():
        store.create(oid, 100, "owner")
        asked = asyncio.ensure_future(transfer.object_info(oid, "n2"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not asked.done()
        store.free(oid)
        return await asyncio.wait_for(asked, 5)

    assert asyncio.run(main()) == {"found": False}
    assert not store._seal_waiters


def test_object_info_of_unknown_and_sealed_objects_answers_at_once(tmp_path):
    store, transfer = _store(tmp_path)
    oid = b"c" * 20

    async def main():
        unknown = await asyncio.wait_for(transfer.object_info(oid, "n2"), 1)
        store.create(oid, 100, "owner")
        _write(store, oid)
        store.seal(oid)
        return unknown, await asyncio.wait_for(transfer.object_info(oid, "n2"), 1)

    unknown, sealed = asyncio.run(main())
    assert unknown == {"found": False} and sealed["found"]
    assert transfer.copies[oid] == {"n2"}
