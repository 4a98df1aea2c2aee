"""Local storage (a ``.part`` file published by rename, a folder of atomic files) and the
async byte target that downloads write through."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from annopull._errors import ResumeError, UnsafeEntryError
from annopull._storage.local import TEMP_NAME, LocalFile, LocalTree
from annopull._storage.target import BATCH_SIZE, BlobTarget

pytestmark = pytest.mark.anyio


@pytest.fixture
def umask() -> Iterator[int]:
    """A known umask for the test (restored after), so modes can be predicted."""
    previous = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class RecordingBlob:
    """A Blob in memory that remembers each call, and on which thread it came."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)
        self.writes: list[int] = []
        self.truncates: list[int] = []
        self.syncs = 0
        self.closed = False
        self.threads: set[int] = set()

    @property
    def seekable(self) -> bool:
        return True

    @property
    def position(self) -> int:
        return len(self.data)

    def write(self, data: bytes) -> None:
        self._note()
        self.data += data
        self.writes.append(len(data))

    def patch(self, offset: int, data: bytes) -> None:
        self.data[offset : offset + len(data)] = data

    def read_at(self, offset: int, size: int) -> bytes:
        return bytes(self.data[offset : offset + size])

    def truncate(self, size: int) -> None:
        self._note()
        del self.data[size:]
        self.truncates.append(size)

    def sync(self) -> None:
        self._note()
        self.syncs += 1

    def close(self) -> None:
        self.closed = True

    def _note(self) -> None:
        import threading

        self.threads.add(threading.get_ident())


# -- BlobTarget --------------------------------------------------------------------------


async def test_target_batches_chunks_into_few_thread_hops(monkeypatch: pytest.MonkeyPatch):
    """Many small chunks cost about one worker-thread hop per batch, never the event loop's."""
    import asyncio
    import threading

    hops = 0
    run_sync = anyio.to_thread.run_sync

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal hops
        hops += 1
        return await run_sync(*args, **kwargs)

    loop = asyncio.get_running_loop()
    run_in_executor = loop.run_in_executor

    def counting_in_executor(*args: Any) -> Any:
        nonlocal hops
        hops += 1
        return run_in_executor(*args)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    monkeypatch.setattr(loop, "run_in_executor", counting_in_executor)
    blob = RecordingBlob()
    target = BlobTarget(blob)
    chunk = bytes(range(256)) * 64  # 16 KiB, a typical network chunk
    count = 3 * BATCH_SIZE // len(chunk) + 5
    for _ in range(count):
        await target.write(chunk)
    assert target.size == count * len(chunk)
    assert hops == 3
    await target.flush()
    assert blob.position == count * len(chunk)
    assert hops == 4
    await target.aclose()
    assert hops == 5
    assert blob.data == chunk * count
    assert blob.syncs == 1
    assert blob.closed
    assert threading.get_ident() not in blob.threads


async def test_target_writes_a_batch_while_the_next_arrives():
    """A full batch is written in the background: the next chunks are taken meanwhile."""
    import threading

    release = threading.Event()
    blob = RecordingBlob()
    real_write = blob.write

    def slow_write(data: bytes) -> None:
        release.wait(10)
        real_write(data)

    blob.write = slow_write  # type: ignore[method-assign]
    target = BlobTarget(blob, batch_size=4)
    await target.write(b"abcd")  # a full batch: goes to the background, returns at once
    await target.write(b"ef")  # taken while the first batch is still being written
    assert target.size == 6
    assert blob.position == 0
    release.set()
    await target.flush()
    assert bytes(blob.data) == b"abcdef"
    await target.aclose()


async def test_target_observer_sees_every_byte_in_order_after_it_is_written():
    """The observer gets each chunk in the worker thread, once it is in the blob, in order."""
    import threading

    blob = RecordingBlob()
    seen: list[tuple[bytes, int]] = []
    target = BlobTarget(blob, batch_size=5)

    def observe(chunk: bytes) -> None:
        assert threading.get_ident() != loop_thread
        seen.append((chunk, blob.position))

    loop_thread = threading.get_ident()
    target.watch(observe)
    pieces = [b"ab", b"cde", b"f", b"ghij", b"k"]
    for piece in pieces:
        await target.write(piece)
    await target.flush()
    target.watch(None)
    await target.write(b"unseen")
    await target.aclose()
    assert [chunk for chunk, _ in seen] == pieces
    assert [at for _, at in seen] == [2, 5, 6, 10, 11]
    assert bytes(blob.data) == b"abcdefghijkunseen"


async def test_target_failed_background_batch_raises_once_and_drops_what_followed():
    """A batch the blob refuses raises from the next call; size is what the blob holds."""
    blob = RecordingBlob()
    target = BlobTarget(blob, batch_size=4)

    def refuse(chunk: bytes) -> None:
        if chunk == b"bad!":
            raise OSError(28, "No space left on device")

    target.watch(refuse)
    await target.write(b"good")
    await target.write(b"bad!")  # written in the background; the observer fails it
    await target.write(b"xy")
    with pytest.raises(OSError, match="No space"):
        await target.flush()
    # "bad!" reached the blob before its observer failed; "xy", batched after, is dropped.
    assert target.size == blob.position == 8
    await target.write(b"zz")
    await target.flush()
    await target.aclose()
    assert bytes(blob.data) == b"goodbad!zz"


async def test_target_size_starts_at_the_blob_position():
    """A target over a blob that already holds bytes continues after them."""
    blob = RecordingBlob(b"earlier run")
    target = BlobTarget(blob, batch_size=4)
    assert target.size == len(b"earlier run")
    await target.write(b" and now")
    await target.aclose()
    assert bytes(blob.data) == b"earlier run and now"


@pytest.mark.parametrize(
    ("cut", "expected", "blob_truncates"),
    [
        pytest.param(14, b"0123456789abcd", [], id="inside-the-batch"),
        pytest.param(10, b"0123456789", [], id="at-the-batch-start"),
        pytest.param(4, b"0123", [4], id="in-written-bytes"),
        pytest.param(0, b"", [0], id="to-nothing"),
        pytest.param(99, b"0123456789abcdef", [], id="beyond-the-end"),
    ],
)
async def test_target_truncate_with_a_partly_filled_batch(
    cut: int, expected: bytes, blob_truncates: list[int]
):
    """A cut inside the batch trims it in memory; a cut below it reaches the blob."""
    blob = RecordingBlob(b"0123456789")
    target = BlobTarget(blob, batch_size=1024)
    await target.write(b"abc")
    await target.write(b"def")
    assert target.size == 16
    await target.truncate(cut)
    assert target.size == len(expected)
    assert blob.truncates == blob_truncates
    await target.write(b"!")
    assert target.size == len(expected) + 1
    await target.aclose()
    assert bytes(blob.data) == expected + b"!"


async def test_target_truncate_splits_a_chunk():
    """A cut in the middle of a batched chunk keeps exactly its first bytes."""
    blob = RecordingBlob()
    target = BlobTarget(blob, batch_size=1024)
    for piece in (b"aaaa", b"bbbb", b"cccc"):
        await target.write(piece)
    await target.truncate(6)
    await target.flush()
    assert bytes(blob.data) == b"aaaabb"
    assert target.size == 6


async def test_target_close_on_cancel_keeps_what_arrived(tmp_path: Path):
    """A stop signal while downloading still writes and syncs the batched bytes for a resume."""
    # A download without a journal: resume starts from whatever .part is there.
    storage = LocalFile(tmp_path / "out.zip", resumable=False)
    with anyio.CancelScope() as scope:
        async with await BlobTarget.open(storage, resume=True) as target:
            await target.write(b"x" * 1000)
            scope.cancel()
            await anyio.sleep(10)
    assert scope.cancelled_caught
    assert storage.partial_path.read_bytes() == b"x" * 1000
    assert not storage.path.exists()


async def test_target_resume_and_publish(tmp_path: Path):
    """Opened with resume, the target continues the .part; publish renames it whole."""
    storage = LocalFile(tmp_path / "out.zip")
    storage.partial_path.write_bytes(b"first half, ")
    async with await BlobTarget.open(storage, resume=True) as target:
        assert target.size == storage.partial_path.stat().st_size == 12
        await target.write(b"second half")
        await target.publish(storage)
    assert storage.path.read_bytes() == b"first half, second half"
    assert not storage.partial_path.exists()
    with pytest.raises(RuntimeError, match="closed"):
        await target.write(b"more")


async def test_target_failed_publish_raises_its_own_error(tmp_path: Path):
    """A publish that cannot rename raises that error, and leaving the block adds none."""
    final = tmp_path / "taken"
    final.mkdir()
    (final / "keep").write_bytes(b"")  # a folder in the way cannot be replaced by a file
    storage = LocalFile(final, partial=tmp_path / "taken.part")

    async def write_and_publish() -> None:
        async with await BlobTarget.open(storage, resume=False) as target:
            await target.write(b"data")
            await target.publish(storage)

    with pytest.raises(IsADirectoryError):
        await write_and_publish()
    assert storage.partial_path.read_bytes() == b"data"


# -- LocalFile ---------------------------------------------------------------------------


def test_local_file_resumes_at_the_end_of_the_partial(tmp_path: Path):
    """open(resume=True) continues after an earlier run's bytes."""
    storage = LocalFile(tmp_path / "a.zip")
    assert not storage.has_partial()
    assert not storage.has_partial()
    storage.partial_path.write_bytes(b"12345")
    assert storage.has_partial()
    assert storage.partial_path.stat().st_size == 5
    blob = storage.open(resume=True)
    assert blob.position == 5
    blob.write(b"678")
    blob.close()
    assert storage.partial_path.read_bytes() == b"12345678"


def test_local_file_open_afresh_drops_the_partial(tmp_path: Path):
    """open(resume=False) starts an empty .part whatever was there."""
    storage = LocalFile(tmp_path / "a.zip")
    storage.partial_path.write_bytes(b"stale")
    blob = storage.open(resume=False)
    assert blob.position == 0
    blob.write(b"new")
    blob.close()
    assert storage.partial_path.read_bytes() == b"new"


def test_local_file_publish_renames_and_the_partial_is_gone(tmp_path: Path):
    """publish() puts the whole object under its name (replacing an older one); no .part stays."""
    storage = LocalFile(tmp_path / "a.zip")
    storage.path.write_bytes(b"older output")
    blob = storage.open(resume=False)
    blob.write(b"new output")
    assert storage.path.read_bytes() == b"older output"
    storage.publish(blob)
    assert storage.path.read_bytes() == b"new output"
    assert not storage.partial_path.exists()
    assert not storage.has_partial()


def test_local_file_custom_partial_and_discard(tmp_path: Path):
    """A partial elsewhere is used as given, never made resumable, and discard removes it."""
    storage = LocalFile(
        tmp_path / ".hidden.zip", partial=tmp_path / ".hidden.zip.part", resumable=False
    )
    assert storage.state_path is None
    assert LocalFile(tmp_path / "x.zip").state_path == tmp_path / "x.zip.journal"
    blob = storage.open(resume=True)
    blob.write(b"zip bytes")
    blob.sync()
    blob.close()
    assert (tmp_path / ".hidden.zip.part").read_bytes() == b"zip bytes"
    storage.discard_partial()
    assert not storage.partial_path.exists()
    storage.discard_partial()  # nothing there: still fine


def test_local_file_mode_is_0666_less_umask(tmp_path: Path, umask: int):
    """A published file gets the mode any new file would: 0o666 less the umask."""
    storage = LocalFile(tmp_path / "a.zip")
    blob = storage.open(resume=False)
    blob.write(b"x")
    storage.publish(blob)
    assert _mode(storage.path) == 0o666 & ~umask


# -- LocalTree ---------------------------------------------------------------------------


def test_atomic_file_is_never_visible_half_written(tmp_path: Path):
    """Until commit the file exists only under a temporary name; after it, whole, alone."""
    tree = LocalTree(tmp_path / "out")
    tree.prepare()
    file = tree.create("sub/data.json")
    file.write(b'{"half": ')
    final = tmp_path / "out" / "sub" / "data.json"
    assert not final.exists()
    [temp] = (tmp_path / "out" / "sub").iterdir()
    assert TEMP_NAME.fullmatch(temp.name)
    file.write(b"true}")
    file.commit()
    tree.sync()
    assert final.read_bytes() == b'{"half": true}'
    assert [p.name for p in final.parent.iterdir()] == ["data.json"]


def test_atomic_file_discard_leaves_nothing(tmp_path: Path):
    """A discarded file leaves no trace, and a failing put leaves none either."""
    tree = LocalTree(tmp_path / "out")
    file = tree.create("a.txt")
    file.write(b"never")
    file.discard()

    def failing() -> Iterator[bytes]:
        yield b"part"
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        tree.put("b.txt", failing())
    assert list((tmp_path / "out").iterdir()) == []


def test_put_writes_whole_file_with_its_time(tmp_path: Path):
    """put() returns the size and gives the file its mtime."""
    tree = LocalTree(tmp_path / "out")
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert tree.put("a/b.txt", [b"ab", b"cd"], mtime=when) == 4
    written = tmp_path / "out" / "a" / "b.txt"
    assert written.read_bytes() == b"abcd"
    assert written.stat().st_mtime == when.timestamp()


def test_temp_name_is_short_for_a_250_byte_name(tmp_path: Path):
    """A final name near the 255-byte limit still gets a (short) temporary name, then its own."""
    tree = LocalTree(tmp_path / "out")
    name = "n" * 246 + ".pdf"
    assert len(name.encode()) == 250
    file = tree.create(name)
    [temp] = (tmp_path / "out").iterdir()
    assert TEMP_NAME.fullmatch(temp.name)
    assert len(temp.name) < 40
    file.write(b"%PDF")
    file.commit()
    assert (tmp_path / "out" / name).read_bytes() == b"%PDF"


def test_symlinked_folder_is_refused(tmp_path: Path):
    """A folder in the tree that is a symlink to elsewhere is never written through."""
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "out"
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    tree = LocalTree(root)
    tree.prepare()
    with pytest.raises(UnsafeEntryError, match="symlink"):
        tree.create("link/evil.txt")
    assert list(outside.iterdir()) == []


def test_prepare_removes_leftover_temp_files(tmp_path: Path):
    """prepare() deletes what a killed run left half-written, at any depth, and nothing else."""
    root = tmp_path / "out"
    (root / "deep" / "er").mkdir(parents=True)
    leftovers = [
        root / ".annopull-0123456789abcdef.tmp",
        root / "deep/er/.annopull-fedcba9876543210.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"half")
    kept = [root / "data.json", root / ".annopull-notatemp.tmp", root / ".annopull.journal"]
    for path in kept:
        path.write_bytes(b"keep")
    LocalTree(root).prepare()
    assert not any(path.exists() for path in leftovers)
    assert all(path.read_bytes() == b"keep" for path in kept)


def test_prepare_creates_the_folder(tmp_path: Path):
    """prepare() makes a missing folder, parents included."""
    tree = LocalTree(tmp_path / "a" / "b")
    tree.prepare()
    assert (tmp_path / "a" / "b").is_dir()
    assert tree.state_path == tmp_path / "a" / "b" / ".annopull.journal"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        pytest.param(None, 0o666 & ~0o027, id="default-0666-less-umask"),
        pytest.param(0o600, 0o600, id="given-mode"),
        pytest.param(0o755, 0o755, id="given-executable"),
    ],
)
def test_atomic_file_modes(tmp_path: Path, umask: int, mode: int | None, expected: int):
    """A committed file has 0o666 less the umask (not mkstemp's 0600), or the mode given."""
    tree = LocalTree(tmp_path / "out")
    file = tree.create("f")
    file.write(b"x")
    file.commit(mode=mode)
    assert _mode(tmp_path / "out" / "f") == expected


async def test_target_publish_stopped_before_it_began_keeps_the_partial(tmp_path: Path):
    """A stop signal pending at publish keeps the batched bytes in the .part, unpublished."""
    # A download without a journal: resume starts from whatever .part is there.
    storage = LocalFile(tmp_path / "out.zip", resumable=False)
    with anyio.CancelScope() as scope:
        async with await BlobTarget.open(storage, resume=True) as target:
            await target.write(b"y" * 500)
            scope.cancel()
            await target.publish(storage)
    assert scope.cancelled_caught
    assert storage.partial_path.read_bytes() == b"y" * 500
    assert not storage.path.exists()


def test_resuming_a_journaled_file_whose_partial_is_gone_is_refused(tmp_path: Path) -> None:
    """With a journal beside it, resuming a .part that is gone fails and creates nothing."""
    storage = LocalFile(tmp_path / "out.zip")
    with pytest.raises(ResumeError, match="missing"):
        storage.open(resume=True)
    assert list(tmp_path.iterdir()) == []
