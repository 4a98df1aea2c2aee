from __future__ import annotations

from pathlib import Path

import pytest

from annopull._errors import ResumeError
from annopull._pipeline.journal import Journal, JournalEntry

FINGERPRINT = {"project": "A", "export": "e1"}


def _entry(i: int, **overrides: object) -> JournalEntry:
    values: dict[str, object] = {
        "name": f"scene-{i}.json",
        "key": f"uuid-{i}",
        "version": f"v{i}",
        "offset": i * 100,
        "end_offset": i * 100 + 90,
        "crc32": 0xDEADBEEF,
        "compressed_size": 50,
        "uncompressed_size": 60 + i,
        "method": 8,
        "flags": 0x800,
        "dos_time": 1234,
        "dos_date": 5678,
        "zip64": i % 2 == 0,
        "comment": f"created-{i}",
    }
    values.update(overrides)
    return JournalEntry(**values)  # type: ignore[arg-type]


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal.create(tmp_path / "j.sqlite", kind="zip", fingerprint=FINGERPRINT)


def test_rows_round_trip_through_commit_and_reopen(tmp_path: Path, journal: Journal) -> None:
    """Every field of a committed row survives closing and reopening the journal."""
    rows = [_entry(i) for i in range(5)]
    for row in rows:
        journal.add(row)
    journal.commit()
    journal.close()
    reopened = Journal.open_existing(journal.path, kind="zip", fingerprint=FINGERPRINT)
    assert list(reopened.entries()) == rows
    assert reopened.count() == 5
    assert reopened.total_uncompressed() == sum(r.uncompressed_size for r in rows)
    assert reopened.last() == rows[-1]


def test_uncommitted_rows_are_lost_on_close(journal: Journal) -> None:
    """Rows added after the last commit are not durable: a crash drops the whole batch."""
    journal.add(_entry(0))
    journal.commit()
    journal.add(_entry(1))
    journal.close()
    reopened = Journal.open_existing(journal.path, kind="zip", fingerprint=FINGERPRINT)
    assert [e.name for e in reopened.entries()] == ["scene-0.json"]


def test_lookups_see_pending_rows_and_rollback_drops_them(journal: Journal) -> None:
    """has_name/version_of see rows before commit; rollback_pending removes exactly those."""
    journal.add(_entry(0))
    journal.commit()
    journal.add(_entry(1))
    assert journal.has_name("scene-1.json")
    assert journal.version_of("uuid-1") == "v1"
    journal.rollback_pending()
    assert not journal.has_name("scene-1.json")
    assert journal.version_of("uuid-1") is None
    assert journal.has_name("scene-0.json")
    assert journal.version_of("uuid-0") == "v0"


def test_version_of_returns_latest_row_for_key(journal: Journal) -> None:
    """A key written twice (a re-pulled item) reports the version of its newest row."""
    journal.add(_entry(0, version="old"))
    journal.add(_entry(1, key="uuid-0", version="new"))
    assert journal.version_of("uuid-0") == "new"


def test_entries_are_ordered_by_offset_across_pages(journal: Journal) -> None:
    """entries() pages through > 1 page in offset order, insertion order breaking ties."""
    for i in reversed(range(1300)):
        journal.add(_entry(i, offset=i // 2 * 10, name=f"n{i}"))
    journal.commit()
    names = [e.name for e in journal.entries()]
    expected = [f"n{i}" for i in sorted(range(1300), key=lambda i: (i // 2, -i))]
    assert names == expected


def test_empty_journal_has_no_last_and_zero_totals(journal: Journal) -> None:
    """A fresh journal reports no rows, no last row and zero bytes."""
    assert journal.last() is None
    assert journal.count() == 0
    assert journal.total_uncompressed() == 0
    assert list(journal.entries()) == []


def test_fingerprint_mismatch_names_the_differing_key(journal: Journal) -> None:
    """Resuming with another project fails with a one-line message naming project, A and B."""
    journal.close()
    with pytest.raises(ResumeError, match="journal is for project 'A', not 'B'") as info:
        Journal.open_existing(journal.path, kind="zip", fingerprint={**FINGERPRINT, "project": "B"})
    assert "\n" not in str(info.value)
    assert "export" not in info.value.reason


def test_kind_mismatch_is_refused(journal: Journal) -> None:
    """A zip journal cannot be resumed as a JSONL output."""
    journal.close()
    with pytest.raises(ResumeError, match="kind 'zip', not 'jsonl'"):
        Journal.open_existing(journal.path, kind="jsonl", fingerprint=FINGERPRINT)


def test_missing_and_corrupt_journals_raise_resume_error(tmp_path: Path) -> None:
    """A missing file and a file that is not SQLite both raise ResumeError, not sqlite3 errors."""
    with pytest.raises(ResumeError, match="no journal"):
        Journal.open_existing(tmp_path / "absent", kind="zip", fingerprint={})
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ResumeError, match="unreadable"):
        Journal.open_existing(garbage, kind="zip", fingerprint={})


def test_create_replaces_an_old_journal(journal: Journal) -> None:
    """create() on an existing path starts empty with the new fingerprint."""
    journal.add(_entry(0))
    journal.commit()
    journal.close()
    fresh = Journal.create(journal.path, kind="zip", fingerprint={"project": "B"})
    assert fresh.count() == 0
    fresh.close()
    Journal.open_existing(journal.path, kind="zip", fingerprint={"project": "B"}).close()


def test_delete_removes_database_and_wal_files(journal: Journal) -> None:
    """delete() leaves no journal, -wal or -shm file behind."""
    journal.add(_entry(0))
    journal.commit()
    journal.delete()
    leftovers = list(journal.path.parent.glob(journal.path.name + "*"))
    assert leftovers == []


def test_temporary_journal_disappears_on_close() -> None:
    """A temporary journal works like any other and its folder is gone after close()."""
    journal = Journal.temporary(kind="zip")
    journal.add(_entry(0))
    assert journal.has_name("scene-0.json")
    folder = journal.path.parent
    journal.close()
    assert not folder.exists()
