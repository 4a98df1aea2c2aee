"""The download spool: memory up to a limit, then an unlinked temp file in a given folder."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from annopull._pipeline.buffers import MemoryBudget, Spool

pytestmark = pytest.mark.anyio

PROC_FDS = Path("/proc/self/fd")


@pytest.fixture
def spill_files(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the temp file names the spools in a test create."""
    created: list[str] = []
    real_mkstemp = tempfile.mkstemp

    def recording_mkstemp(*args: Any, **kwargs: Any) -> Any:
        fd, name = real_mkstemp(*args, **kwargs)
        created.append(name)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", recording_mkstemp)
    return created


def _open_names() -> list[str]:
    """What this process's open file descriptors point to (Linux)."""
    names = []
    for fd in os.listdir(PROC_FDS):
        # The descriptor listdir itself used is gone by now.
        with contextlib.suppress(OSError):
            names.append(os.readlink(PROC_FDS / fd))
    return names


async def _read(spool: Spool, size: int = 7) -> bytes:
    return b"".join([chunk async for chunk in spool.chunks(size)])


async def test_stays_in_memory_up_to_the_limit(tmp_path: Path, spill_files: list[str]) -> None:
    """Exactly memory_limit bytes stay in RAM: no temp file, getvalue gives them back."""
    spool = Spool(memory_limit=10, directory=tmp_path)
    await spool.write(b"01234")
    await spool.write(b"56789")
    assert (spool.in_memory, spool.size) == (True, 10)
    assert spool.getvalue() == b"0123456789"
    assert spill_files == []
    await spool.aclose()


async def test_spills_past_the_limit_to_an_unlinked_file_in_the_directory(
    tmp_path: Path, spill_files: list[str]
) -> None:
    """The byte past the limit moves everything to a temp file made in `directory`, unlinked."""
    spool = Spool(memory_limit=10, directory=tmp_path)
    await spool.write(b"0123456789")
    await spool.write(b"abc")
    assert (spool.in_memory, spool.size) == (False, 13)
    assert len(spill_files) == 1
    spilled = Path(spill_files[0])
    assert spilled.parent == tmp_path
    assert spilled.name.startswith(".annopull-spool-")
    # Unlinked at once: nothing is left in the folder even if the process dies now.
    assert os.listdir(tmp_path) == []
    assert await _read(spool) == b"0123456789abc"
    with pytest.raises(RuntimeError, match="spilled to disk"):
        spool.getvalue()
    await spool.aclose()


@pytest.mark.parametrize(
    ("limit", "cut", "in_memory"),
    [
        pytest.param(1 << 20, 5, True, id="in-memory"),
        pytest.param(8, 5, False, id="spilled"),
        pytest.param(8, 0, False, id="spilled-to-empty"),
    ],
)
async def test_truncate_cuts_back_and_writes_continue_there(
    tmp_path: Path, limit: int, cut: int, in_memory: bool
) -> None:
    """After truncate(n) the spool holds the first n bytes and a write appends right after."""
    spool = Spool(memory_limit=limit, directory=tmp_path)
    await spool.write(b"abcdefghijkl")
    await spool.truncate(cut)
    assert spool.size == cut
    await spool.write(b"XYZ")
    assert (spool.in_memory, spool.size) == (in_memory, cut + 3)
    assert await _read(spool) == b"abcdefghijkl"[:cut] + b"XYZ"
    await spool.aclose()


@pytest.mark.parametrize("limit", [pytest.param(1 << 20, id="memory"), pytest.param(1, id="disk")])
@pytest.mark.parametrize("size", [1000, 65_536, 1 << 20])
async def test_chunks_round_trip(tmp_path: Path, limit: int, size: int) -> None:
    """Bytes written in uneven pieces come back identical, in pieces of at most `size`."""
    data = os.urandom(250_001)
    spool = Spool(memory_limit=limit, directory=tmp_path)
    for start in range(0, len(data), 9_999):
        await spool.write(data[start : start + 9_999])
    pieces = [chunk async for chunk in spool.chunks(size)]
    assert b"".join(pieces) == data
    assert max(len(piece) for piece in pieces) <= size
    # Reading twice gives the same bytes: chunks() starts from the beginning each time.
    assert await _read(spool, 65_536) == data
    await spool.aclose()


@pytest.mark.skipif(not PROC_FDS.is_dir(), reason="needs /proc/self/fd to see open files")
async def test_aclose_deletes_the_spilled_file(tmp_path: Path, spill_files: list[str]) -> None:
    """aclose releases the temp file: no descriptor of this process points to it any more."""
    spool = Spool(memory_limit=4, directory=tmp_path)
    await spool.write(b"more than four bytes")
    (name,) = spill_files
    assert f"{name} (deleted)" in _open_names()
    await spool.aclose()
    assert not any(name in target for target in _open_names())
    assert spool.in_memory
    await spool.aclose()  # a second close is harmless


async def test_aclose_frees_an_in_memory_spool() -> None:
    """aclose of a spool that never spilled drops its bytes."""
    spool = Spool(memory_limit=100)
    await spool.write(b"held")
    await spool.aclose()
    assert spool.getvalue() == b""


async def test_spools_sharing_a_budget_spill_once_it_is_spent(tmp_path: Path) -> None:
    """Three spools under a 10-byte budget: the third spills though under its own limit;
    truncating, spilling and closing give the bytes back, so a later spool fits again."""
    budget = MemoryBudget(10)
    first, second, third = (
        Spool(memory_limit=8, directory=tmp_path, budget=budget) for _ in range(3)
    )
    await first.write(b"01234")
    await second.write(b"abcd")
    assert budget.held == 9
    await third.write(b"xy")  # 11 > 10: to disk, nothing reserved
    assert (third.in_memory, budget.held) == (False, 9)
    assert await _read(third) == b"xy"
    await first.truncate(2)
    assert budget.held == 6
    await second.write(b"efghi")  # past its own limit of 8: spills, returns its 4 bytes
    assert (second.in_memory, budget.held) == (False, 2)
    assert await _read(second) == b"abcdefghi"
    later = Spool(memory_limit=8, directory=tmp_path, budget=budget)
    await later.write(b"12345678")
    assert (later.in_memory, budget.held) == (True, 10)
    for spool in (first, second, third, later):
        await spool.aclose()
    assert budget.held == 0
