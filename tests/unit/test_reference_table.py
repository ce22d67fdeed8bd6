from __future__ import annotations

from runtime._core.reference_table import ReferenceTable

ME, OTHER = "unix:/me", "unix:/other"


def _table():
    released, borrowed = [], []
    t = ReferenceTable(ME, lambda oid, e: released.append((oid, e.owned)), lambda oid, owner: borrowed.append(oid))
    return t, released, borrowed


def test_owned_object_released_when_last_local_ref_goes():
    t, released, _ = _table()
    t.add_local(b"a", ME)
    t.add_local(b"a", ME)
    t.remove_local(b"a")
    assert released == []
    t.remove_local(b"a")
    assert released == [(b"a", True)]


def test_pending_task_and_containment_keep_object_alive():
    t, released, _ = _table()
    t.add_local(b"a", ME)
    t.add_submitted(b"a", ME)
    t.add_contained(b"a", ME, b"outer")
    t.remove_local(b"a")
    t.remove_submitted(b"a")
    assert released == []
    t.remove_contained(b"a", b"outer")
    assert released == [(b"a", True)]


def test_borrowers_keep_owned_object_alive_until_they_leave():
    t, released, _ = _table()
    t.add_local(b"a", ME)
    assert t.add_borrower(b"a", OTHER)
    t.remove_local(b"a")
    assert released == []
    t.remove_borrower_everywhere(OTHER)
    assert released == [(b"a", True)]


def test_borrowed_ref_reports_new_borrow_and_release():
    t, released, borrowed = _table()
    t.add_local(b"b", OTHER)
    t.add_local(b"b", OTHER)
    assert borrowed == [b"b"]
    t.remove_local(b"b")
    t.remove_local(b"b")
    assert released == [(b"b", False)]
