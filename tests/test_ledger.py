"""The pipeline's Ledger: rows of key, version, name and the sink's receipt, kept in SQLite."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from annopull._errors import ResumeError
from annopull._pipeline.ledger import Ledger, LedgerRow

FINGERPRINT = {"project": "A", "export": "e1"}


def _row(i: int, **overrides: object) -> LedgerRow:
    values: dict[str, object] = {
        "key": f"uuid-{i}",
        "version": f"2024-01-01T00:00:{i % 60:02d}.{i:06d}Z",
        "name": f"scene-{i}.json",
        # Opaque bytes: NULs and high bytes must come back exactly.
        "receipt": b"\x00receipt\xff" + i.to_bytes(4, "little"),
    }
    values.update(overrides)
    return LedgerRow(**values)  # type: ignore[arg-type]


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger.create(tmp_path / "j.sqlite", kind="zip", fingerprint=FINGERPRINT)


def test_rows_round_trip_through_commit_and_reopen(ledger: Ledger) -> None:
    """Every field of a committed row survives closing and reopening the ledger."""
    rows = [_row(i) for i in range(5)]
    ledger.record(rows)
    ledger.commit()
    ledger.close()
    reopened = Ledger.open_existing(ledger.path, kind="zip", fingerprint=FINGERPRINT)
    assert list(reopened.receipts()) == [r.receipt for r in rows]
    assert reopened.count() == 5
    assert reopened.last_receipt() == rows[-1].receipt
    assert all(reopened.has_name(r.name) for r in rows)
    assert [reopened.version_of(r.key) for r in rows] == [r.version for r in rows]
    assert sorted(Ledger.read_versions(ledger.path)) == sorted((r.key, r.version) for r in rows)
    reopened.close()


def test_uncommitted_rows_are_lost_on_close(ledger: Ledger) -> None:
    """Rows recorded after the last commit are not durable: a crash drops the whole batch."""
    ledger.record([_row(0)])
    ledger.commit()
    ledger.record([_row(1), _row(2)])
    ledger.close()
    reopened = Ledger.open_existing(ledger.path, kind="zip", fingerprint=FINGERPRINT)
    assert reopened.count() == 1
    assert list(reopened.receipts()) == [_row(0).receipt]
    reopened.close()


def test_lookups_see_pending_rows_and_close_drops_them(ledger: Ledger) -> None:
    """has_name, version_of, count, receipts and last_receipt see rows before commit;
    closing without commit removes exactly those."""
    ledger.record([_row(0)])
    ledger.commit()
    ledger.record([_row(1)])
    assert ledger.has_name("scene-1.json")
    assert ledger.version_of("uuid-1") == _row(1).version
    assert ledger.count() == 2
    assert list(ledger.receipts()) == [_row(0).receipt, _row(1).receipt]
    assert ledger.last_receipt() == _row(1).receipt
    ledger.close()
    reopened = Ledger.open_existing(ledger.path, kind="zip", fingerprint=FINGERPRINT)
    assert not reopened.has_name("scene-1.json")
    assert reopened.version_of("uuid-1") is None
    assert reopened.has_name("scene-0.json")
    assert reopened.version_of("uuid-0") == _row(0).version
    assert reopened.last_receipt() == _row(0).receipt
    reopened.close()


def test_version_of_returns_latest_row_for_key(ledger: Ledger) -> None:
    """A key written twice (a re-pulled item) reports the version of its newest row."""
    ledger.record([_row(0, version="old")])
    ledger.record([_row(1, key="uuid-0", version="new")])
    assert ledger.version_of("uuid-0") == "new"
    ledger.commit()
    assert ledger.version_of("uuid-0") == "new"


@pytest.mark.parametrize("total", [1, 511, 512, 513, 1024, 1300])
def test_receipts_come_back_in_write_order_across_pages(ledger: Ledger, total: int) -> None:
    """receipts() pages through > 512 rows in the order they were recorded, whatever their
    names or keys, across several record() batches and commits."""
    # Names and keys descending, so no index other than the write order gives this order.
    rows = [_row(i, name=f"n{total - i:05d}", key=f"k{total - i:05d}") for i in range(total)]
    for start in range(0, total, 300):
        ledger.record(rows[start : start + 300])
        if start % 600 == 0:
            ledger.commit()
    assert list(ledger.receipts()) == [r.receipt for r in rows]
    ledger.commit()
    assert list(ledger.receipts()) == [r.receipt for r in rows]
    assert ledger.count() == total


def test_receipts_iterator_survives_a_commit_between_pages(ledger: Ledger) -> None:
    """A receipts() iteration begun before a commit goes on after it, yielding each row once."""
    rows = [_row(i) for i in range(1100)]
    ledger.record(rows)
    receipts = ledger.receipts()
    first = [next(receipts) for _ in range(600)]
    ledger.commit()
    assert first + list(receipts) == [r.receipt for r in rows]


def test_empty_ledger_has_no_last_receipt_and_no_rows(ledger: Ledger) -> None:
    """A fresh ledger reports no rows, no last receipt, no names and no versions."""
    assert ledger.last_receipt() is None
    assert ledger.count() == 0
    assert list(ledger.receipts()) == []
    assert not ledger.has_name("scene-0.json")
    assert ledger.version_of("uuid-0") is None
    assert list(Ledger.read_versions(ledger.path)) == []


def test_fingerprint_mismatch_names_the_differing_key(ledger: Ledger) -> None:
    """Resuming with another project fails with a one-line message naming project, A and B."""
    ledger.close()
    with pytest.raises(ResumeError, match="journal is for project 'A', not 'B'") as info:
        Ledger.open_existing(ledger.path, kind="zip", fingerprint={**FINGERPRINT, "project": "B"})
    assert "\n" not in str(info.value)
    assert "export" not in info.value.reason
    assert info.value.item == str(ledger.path)


def test_fingerprint_key_missing_on_either_side_is_a_mismatch(ledger: Ledger) -> None:
    """A fingerprint key the ledger lacks, or one the caller lacks, is named as differing."""
    ledger.close()
    with pytest.raises(ResumeError, match="journal is for since '', not '2024'"):
        Ledger.open_existing(ledger.path, kind="zip", fingerprint={**FINGERPRINT, "since": "2024"})
    with pytest.raises(ResumeError, match="journal is for export 'e1', not ''"):
        Ledger.open_existing(ledger.path, kind="zip", fingerprint={"project": "A"})


def test_kind_mismatch_is_refused(ledger: Ledger) -> None:
    """A zip ledger cannot be resumed as a JSONL output, and the message says both kinds."""
    ledger.close()
    with pytest.raises(ResumeError, match="kind 'zip', not 'jsonl'"):
        Ledger.open_existing(ledger.path, kind="jsonl", fingerprint=FINGERPRINT)


def test_missing_and_corrupt_ledgers_raise_resume_error(tmp_path: Path) -> None:
    """A missing file and a file that is not SQLite both raise ResumeError, not sqlite3 errors."""
    with pytest.raises(ResumeError, match="no journal"):
        Ledger.open_existing(tmp_path / "absent", kind="zip", fingerprint={})
    assert not (tmp_path / "absent").exists()
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ResumeError, match="unreadable"):
        Ledger.open_existing(garbage, kind="zip", fingerprint={})


def test_ledger_of_another_schema_is_refused(tmp_path: Path) -> None:
    """A database with the right tables but another schema version (the old Journal's) is
    refused as written by another annopull version."""
    path = tmp_path / "old.journal"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("CREATE TABLE entries (name TEXT)")
        conn.executemany("INSERT INTO meta VALUES (?, ?)", [("schema", "1"), ("kind", "zip")])
    conn.close()
    with pytest.raises(ResumeError, match="another annopull version"):
        Ledger.open_existing(path, kind="zip", fingerprint={})


def test_create_replaces_an_old_ledger(ledger: Ledger) -> None:
    """create() on an existing path starts empty with the new fingerprint."""
    ledger.record([_row(0)])
    ledger.commit()
    ledger.close()
    fresh = Ledger.create(ledger.path, kind="zip", fingerprint={"project": "B"})
    assert fresh.count() == 0
    assert list(fresh.receipts()) == []
    fresh.close()
    Ledger.open_existing(ledger.path, kind="zip", fingerprint={"project": "B"}).close()


def test_delete_removes_database_and_wal_files(ledger: Ledger) -> None:
    """delete() leaves no ledger, -wal or -shm file behind."""
    ledger.record([_row(0)])
    ledger.commit()
    assert ledger.path.exists()
    ledger.delete()
    leftovers = list(ledger.path.parent.glob(ledger.path.name + "*"))
    assert leftovers == []


def test_temporary_ledger_disappears_on_close() -> None:
    """A temporary ledger works like any other and its folder is gone after close()."""
    ledger = Ledger.temporary(kind="zip")
    ledger.record([_row(0)])
    assert ledger.has_name("scene-0.json")
    ledger.commit()
    assert list(ledger.receipts()) == [_row(0).receipt]
    folder = ledger.path.parent
    assert folder.is_dir()
    ledger.close()
    assert not folder.exists()


def test_temporary_ledger_goes_in_the_given_directory(tmp_path: Path) -> None:
    """temporary(directory=) makes its private folder there, and close() removes only that."""
    ledger = Ledger.temporary(kind="zip", directory=tmp_path)
    assert ledger.path.parent.parent == tmp_path
    ledger.close()
    assert list(tmp_path.iterdir()) == []
    assert tmp_path.is_dir()


def test_reader_sees_committed_rows_only(ledger: Ledger) -> None:
    """A reader() view answers from committed rows: pending ones appear only after commit."""
    ledger.record([_row(0)])
    ledger.commit()
    reader = ledger.reader()
    ledger.record([_row(1)])
    assert ledger.has_name("scene-1.json")
    assert reader.has_name("scene-0.json")
    assert not reader.has_name("scene-1.json")
    assert reader.version_of("uuid-1") is None
    assert reader.count() == 1
    assert list(reader.receipts()) == [_row(0).receipt]
    ledger.commit()
    assert reader.has_name("scene-1.json")
    assert reader.version_of("uuid-1") == _row(1).version
    assert reader.last_receipt() == _row(1).receipt
    reader.close()
    # Closing the reader leaves the ledger itself working.
    ledger.record([_row(2)])
    ledger.commit()
    assert ledger.count() == 3


def test_reader_cannot_write(ledger: Ledger) -> None:
    """The reader() connection is read-only: recording through it fails and changes nothing."""
    reader = ledger.reader()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.record([_row(0)])
    reader.close()
    assert ledger.count() == 0


def test_read_versions_lists_committed_rows_of_any_run(ledger: Ledger) -> None:
    """read_versions() yields (key, version) of every committed row, ignores kind and
    fingerprint, leaves pending rows out, and does not stop the ledger being resumed."""
    ledger.record([_row(0), _row(1, key="uuid-0", version="newer")])
    ledger.commit()
    ledger.record([_row(2)])
    assert list(Ledger.read_versions(ledger.path)) == [
        ("uuid-0", _row(0).version),
        ("uuid-0", "newer"),
    ]
    ledger.close()
    Ledger.open_existing(ledger.path, kind="zip", fingerprint=FINGERPRINT).close()


def test_read_versions_of_a_non_ledger_raises_resume_error(tmp_path: Path) -> None:
    """A missing file, a non-SQLite file and a SQLite file without entries all raise
    ResumeError naming the file; a missing one is not created."""
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not sqlite" * 100)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    for path in (tmp_path / "absent", garbage, other):
        with pytest.raises(ResumeError, match="not a readable annopull journal") as caught:
            list(Ledger.read_versions(path))
        assert caught.value.item == str(path)
    assert not (tmp_path / "absent").exists()


def test_read_only_views_work_under_a_folder_named_with_uri_characters(tmp_path: Path) -> None:
    """reader() and read_versions() open the right file when its folder has '#', '?' or '%'."""
    folder = tmp_path / "a#b?c%d"
    folder.mkdir()
    ledger = Ledger.create(folder / "j.journal", kind="zip", fingerprint={})
    ledger.record([LedgerRow(key="k", version="v", name="n")])
    ledger.commit()
    reader = ledger.reader()
    try:
        assert reader.version_of("k") == "v"
    finally:
        reader.close()
        ledger.close()
    assert list(Ledger.read_versions(folder / "j.journal")) == [("k", "v")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a#b?c%d"]
