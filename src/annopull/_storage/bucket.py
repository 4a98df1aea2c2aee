"""Object-store storages: one object as a multipart upload, or one object per file.

::

    s3://b/out.zip                  S3Object: the zip (or .jsonl) as one multipart upload
    s3://b/out.zip.annopull/        its resume state, removed when the object is complete
        upload.json                   the upload id, output kind and the run's fingerprint
        rows-000001.jsonl …           one manifest per durable checkpoint: the parts it
                                      made durable (number, size, ETag), then the ledger
                                      rows of the entries in them
    s3://b/prefix/                  S3Tree: one PutObject per entry
    s3://b/prefix/.annopull/        its resume state: upload.json, rows-*.jsonl

**Parts hold whole entries.** A part is cut only where an entry ends
(:meth:`Blob.mark_boundary`, which the zip and JSON Lines writers call once per finished
entry, and :meth:`Blob.sync` at checkpoints), once a part's worth is buffered: a part must be
at least 5 MiB (all but the last), and nothing before an entry's end is ever patched or cut
again. The blob counts the entries each uploaded part completes. At a checkpoint
:meth:`RemoteState.commit` gets the ledger rows written since the last manifest, in write
order, and writes the next manifest: the parts uploaded since, and the rows of exactly the
entries they hold; the rest wait for a later checkpoint. Only then is any of it durable. A
resume (from any machine) reads the manifests, checks their parts with ListParts, and
continues the zip at the sum of their sizes, which is where the last manifested entry ends;
a part uploaded after the last manifest is overwritten by reusing its number. Memory is
about one part plus the largest entry, never the archive. The part size grows from 5 MiB
(doubling every 1,000 parts) so 10,000 parts reach ~5 TB.

**One run per output.** A fresh run writes ``upload.json`` with ``If-None-Match: *``: a
second run starting on the same key is refused (the local ``flock`` cannot see another
machine). Two runs resuming at once are not refused up front, but each manifest is also
written with ``If-None-Match: *``, so the second to reach a manifest number stops there.

A run stopped before anything was durable (no manifest yet) aborts its upload and removes
its state on close: nothing would be left to resume, and an upload left behind bills its
parts forever. One stopped later keeps both for ``--resume``.
"""

from __future__ import annotations

import base64
import hashlib
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Final

import orjson

from annopull._errors import ResumeError, StorageError
from annopull._storage.base import RemoteState, RunHeader, StateRow, UnreadableRangeError
from annopull._storage.lock import OutputBusyError
from annopull._storage.s3 import PartInfo, PreconditionFailedError, S3Client, S3Url

__all__ = ["MIN_PART_SIZE", "PART_SIZE", "S3Download", "S3Object", "S3Tree", "state_prefix"]

#: S3's smallest part (all but the last).
MIN_PART_SIZE: Final = 5 << 20
#: The first parts' size (S3's least: the buffered part is memory for the whole run); see
#: the module docstring for how it grows.
PART_SIZE: Final = MIN_PART_SIZE
_MAX_PARTS: Final = 10_000
#: Objects of a tree being put at once (the client's connection pool holds 32).
_PUTS_IN_FLIGHT: Final = 32
_UPLOAD: Final = "upload.json"
_MANIFEST: Final = "rows-{:06d}.jsonl"


def state_prefix(url: S3Url) -> S3Url:
    """Where an output's resume state lives: ``KEY.annopull/``, or ``PREFIX/.annopull/``."""
    if url.is_prefix:
        return url.child(".annopull/")
    return S3Url(url.bucket, f"{url.key}.annopull/")


def _cache_path(url: S3Url, name: str) -> Path:
    """The local ledger cache of an output: in the temp folder, keyed by the URL (never in
    the working folder, never trusted over the bucket: a resume rebuilds it)."""
    digest = hashlib.sha256(str(url).encode()).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / "annopull-s3" / digest / name


@dataclass(slots=True, kw_only=True)
class _Upload:
    """The multipart upload being written: what is durable, and what is not yet."""

    upload_id: str
    committed: list[PartInfo] = field(default_factory=list)
    pending: list[PartInfo] = field(default_factory=list)  # uploaded, in no manifest yet
    #: Entries the pending parts hold, and entry ends still in the buffer (positions).
    uploaded_entries: int = 0
    ends: list[int] = field(default_factory=list)

    @property
    def next_number(self) -> int:
        return len(self.committed) + len(self.pending) + 1

    @property
    def durable_size(self) -> int:
        return sum(p.size for p in self.committed)


class _State:
    """The state objects under a prefix: ``upload.json`` and the numbered manifests."""

    def __init__(self, client: S3Client, output: S3Url) -> None:
        self.client = client
        self.output = output
        self.prefix = state_prefix(output)
        self.manifests = 0
        #: Rows the manifests hold.
        self.rows = 0
        #: The manifests' first lines (their parts), once every manifest was read.
        self.heads: list[Any] | None = None

    @property
    def description(self) -> str:
        return str(self.prefix)

    def check(self) -> None:
        self.client.check_bucket(self.output)

    def header(self) -> dict[str, Any] | None:
        data = self.client.get(self.prefix.child(_UPLOAD))
        if data is None:
            return None
        try:
            header = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ResumeError("unreadable resume state", item=str(self.prefix)) from None
        if not isinstance(header, dict):
            raise ResumeError("unreadable resume state", item=str(self.prefix))
        return header

    def start(self, header: Mapping[str, Any]) -> None:
        try:
            self.client.put(self.prefix.child(_UPLOAD), orjson.dumps(header), if_none_match=True)
        except PreconditionFailedError:
            raise OutputBusyError(
                f"another run started writing {self.output}", item=str(self.prefix)
            ) from None
        self.manifests = 0

    def manifest_lines(self) -> Iterator[list[Any]]:
        """Every manifest's lines (parsed), in order; counts them for the next number."""
        # Listed in key order, which the zero-padded numbers make write order.
        names = [
            o.url for o in self.client.list_objects(self.prefix) if o.url.name.startswith("rows-")
        ]
        heads = []
        self.rows = 0
        for number, url in enumerate(names, start=1):
            if url.name != _MANIFEST.format(number):
                raise ResumeError(f"resume state lacks {_MANIFEST.format(number)}", item=str(url))
            data = self.client.get(url)
            if data is None:
                raise ResumeError("a manifest vanished while read", item=str(url))
            lines = [orjson.loads(line) for line in data.splitlines() if line]
            heads.append(lines[0])
            yield lines
            self.manifests = number
            self.rows += len(lines) - 1
        self.heads = heads

    def write_manifest(self, head: Mapping[str, Any], rows: Sequence[StateRow]) -> None:
        lines = [orjson.dumps(head)]
        lines += [
            orjson.dumps([key, version, name, base64.b64encode(receipt).decode()])
            for key, version, name, receipt in rows
        ]
        url = self.prefix.child(_MANIFEST.format(self.manifests + 1))
        try:
            self.client.put(url, b"\n".join(lines) + b"\n", if_none_match=True)
        except PreconditionFailedError:
            raise OutputBusyError(
                f"another run is writing {self.output} (it wrote {url.name} first)",
                item=str(self.prefix),
            ) from None
        self.manifests += 1
        self.rows += len(rows)

    def clear(self) -> None:
        self.client.delete([o.url for o in self.client.list_objects(self.prefix)])
        self.manifests = self.rows = 0


def _rows_of(lines: Iterable[list[Any]]) -> Iterator[StateRow]:
    for key, version, name, receipt in lines:
        yield str(key), str(version), str(name), base64.b64decode(receipt)


def _header_of(header: Mapping[str, Any], where: str) -> RunHeader:
    fingerprint = header.get("fingerprint", {})
    if not isinstance(fingerprint, dict):
        raise ResumeError("unreadable resume state", item=where)
    return RunHeader(kind=str(header.get("kind", "")), fingerprint=fingerprint)


class _MultipartBlob:
    """The object's bytes since the last uploaded part, in memory.

    Parts are cut where an entry ends (:meth:`mark_boundary`, :meth:`sync`) once a part's
    worth is buffered, or at any write for a plain download. Patches, reads and cuts reach
    back to the last cut only: the zip writer patches and cuts only the entry it is
    writing, which always starts at or after the last entry end.
    """

    def __init__(self, storage: S3Object, upload: _Upload, base: int) -> None:
        self._storage = storage
        self.upload = upload
        self._base = base
        self._buffer = bytearray()
        self.published = False
        self.closed = False

    @property
    def seekable(self) -> bool:
        return True

    @property
    def position(self) -> int:
        return self._base + len(self._buffer)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def write(self, data: bytes) -> None:
        self._buffer += data
        if self._storage.cuts_freely and len(self._buffer) >= self._storage.part_threshold(
            self.upload.next_number
        ):
            # A plain download is never patched: parts go up as they fill, memory ~one part.
            self.upload_buffer()

    def patch(self, offset: int, data: bytes) -> None:
        start = self._reach(offset)
        self._buffer[start : start + len(data)] = data

    def read_at(self, offset: int, size: int) -> bytes:
        start = self._reach(offset)
        return bytes(self._buffer[start : start + size])

    def truncate(self, size: int) -> None:
        del self._buffer[self._reach(size) :]

    def mark_boundary(self) -> None:
        self.upload.ends.append(self.position)
        self.sync()

    def sync(self) -> None:
        if len(self._buffer) >= self._storage.part_threshold(self.upload.next_number):
            self.upload_buffer()

    def upload_buffer(self) -> None:
        """Send the buffer as the next part (any size: the caller knows it may)."""
        number = self.upload.next_number
        if number > _MAX_PARTS:
            raise StorageError("the object outgrew 10,000 parts", url=self._storage.description)
        # The buffer itself is sent (the client copies nothing) and a fresh one takes its
        # place, so nothing writes into the part while it goes up: a part is held once.
        data, self._buffer = self._buffer, bytearray()
        try:
            part = self._storage.client.upload_part(
                self._storage.url, self.upload.upload_id, number, data
            )
        except BaseException:
            # A copy: views of the sent buffer may live on, and they forbid resizing it.
            self._buffer = bytearray(data)
            raise
        self.upload.pending.append(part)
        self._base += len(data)
        upload = self.upload
        done = sum(1 for end in upload.ends if end <= self._base)
        upload.uploaded_entries += done
        del upload.ends[:done]
        self._storage.uploaded(self)

    def close(self) -> None:
        self._buffer = bytearray()
        if not self.published and not self.closed:
            self._storage.closed_unpublished(self)
        self.closed = True

    def _reach(self, offset: int) -> int:
        if offset < self._base:
            raise UnreadableRangeError(
                f"bytes before offset {self._base} are uploaded and cannot be changed or read",
                url=self._storage.description,
            )
        return offset - self._base


class S3Object:
    """One object of a bucket, written as a multipart upload (an :class:`ObjectStorage`).

    Args:
        url: the object.
        client: from :func:`~annopull._storage.s3.open_client`.
        journaled: the pull pipeline keeps a ledger for it and commits manifests through
            :attr:`remote_state` (zip, JSON Lines). ``False``: a plain download, each part
            recorded as soon as it is uploaded, so a resume continues at its end.
        part_size: the first parts' size (at least 5 MiB).
    """

    def __init__(
        self, url: S3Url, *, client: S3Client, journaled: bool = True, part_size: int = PART_SIZE
    ) -> None:
        if url.is_prefix:
            raise ValueError(f"an object needs a key, not a prefix: {url}")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"parts are at least {MIN_PART_SIZE} bytes, got {part_size}")
        self.url = url
        self.client = client
        self._journaled = journaled
        self._part_size = part_size
        self._state = _State(client, url)
        self._header: dict[str, Any] | None = None
        self._blob: _MultipartBlob | None = None

    def __repr__(self) -> str:
        return f"S3Object({str(self.url)!r})"

    @property
    def description(self) -> str:
        return str(self.url)

    @property
    def state_path(self) -> Path:
        return _cache_path(self.url, self.url.name + ".journal")

    @property
    def partial_path(self) -> None:
        return None

    @property
    def remote_state(self) -> RemoteState:
        return _ObjectState(self)

    @property
    def cuts_freely(self) -> bool:
        """Whether parts may be cut at any write (a plain download, never patched)."""
        return not self._journaled

    def part_threshold(self, number: int) -> int:
        """How much must be buffered before part ``number`` is cut."""
        return self._part_size << min((number - 1) // 1000, 9)

    def has_partial(self) -> bool:
        return self._state.header() is not None

    def start(self, *, kind: str, fingerprint: Mapping[str, str]) -> None:
        """Create the upload and its ``upload.json`` (refused if one appeared meanwhile)."""
        upload_id = self.client.create_upload(self.url)
        header = {"upload_id": upload_id, "kind": kind, "fingerprint": dict(fingerprint)}
        try:
            self._state.start(header)
        except BaseException:
            self.client.abort_upload(self.url, upload_id)
            raise
        self._header = header

    def open(self, *, resume: bool) -> _MultipartBlob:
        if self._header is None:
            self._header = self._state.header()
            if self._header is not None and not resume:
                # A plain download started over: the old upload goes first.
                self.discard_partial()
            if self._header is None:
                if self._journaled:
                    raise ResumeError("no upload was started", item=self.description)
                self.start(kind="download", fingerprint={})
                assert self._header is not None
        upload = _Upload(upload_id=str(self._header["upload_id"]))
        if resume:
            upload.committed = self._committed_parts(upload.upload_id)
        self._blob = _MultipartBlob(self, upload, upload.durable_size)
        return self._blob

    def _committed_parts(self, upload_id: str) -> list[PartInfo]:
        """The parts the manifests name, checked against what the store holds."""
        if self._state.heads is None:
            # Not read yet for the ledger (a plain download): read them now.
            for _lines in self._state.manifest_lines():
                pass
        assert self._state.heads is not None
        named = [
            PartInfo(int(p["number"]), int(p["size"]), str(p["etag"]))
            for head in self._state.heads
            for p in head["parts"]
        ]
        held = self.client.list_parts(self.url, upload_id)
        if held is None:
            raise ResumeError(
                "the unfinished upload is gone (aborted, or expired by a lifecycle rule); "
                f"delete {self._state.prefix} to start over",
                item=self.description,
            )
        by_number = {p.number: p for p in held}
        for part in named:
            found = by_number.get(part.number)
            if found is None or (found.size, found.etag) != (part.size, part.etag):
                raise ResumeError(
                    f"part {part.number} of the upload is not the one its manifest names",
                    item=self.description,
                )
        return named

    def publish(self, blob: object) -> None:
        assert isinstance(blob, _MultipartBlob)
        upload = blob.upload
        if blob.buffered or upload.next_number == 1:
            blob.upload_buffer()
        self.client.complete_upload(self.url, upload.upload_id, upload.committed + upload.pending)
        blob.published = True
        blob.close()
        self._state.clear()
        self._header = None

    def discard_partial(self) -> None:
        header = self._header or self._state.header()
        if header is not None:
            self.client.abort_upload(self.url, str(header.get("upload_id", "")))
        self._state.clear()
        self._header = None

    # -- called by the blob and the state ------------------------------------------------
    def uploaded(self, blob: _MultipartBlob) -> None:
        if not self._journaled:
            self.commit_parts(blob.upload, ())

    def commit_parts(self, upload: _Upload, rows: Sequence[StateRow]) -> None:
        head = {
            "parts": [{"number": p.number, "size": p.size, "etag": p.etag} for p in upload.pending]
        }
        self._state.write_manifest(head, rows)
        upload.committed += upload.pending
        upload.pending = []
        upload.uploaded_entries = 0

    def closed_unpublished(self, blob: _MultipartBlob) -> None:
        if not blob.upload.committed:
            # Nothing durable: a resume would start from nothing anyway.
            self.discard_partial()

    @property
    def blob(self) -> _MultipartBlob | None:
        return self._blob

    @property
    def state(self) -> _State:
        return self._state

    def header(self) -> dict[str, Any] | None:
        return self._state.header()


class _ObjectState:
    """:class:`RemoteState` of an :class:`S3Object`."""

    def __init__(self, storage: S3Object) -> None:
        self._storage = storage

    @property
    def description(self) -> str:
        return self._storage.state.description

    @property
    def committed(self) -> int:
        return self._storage.state.rows

    def prepare(self) -> None:
        self._storage.state.check()
        self._storage.state_path.parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> RunHeader | None:
        header = self._storage.header()
        return None if header is None else _header_of(header, self.description)

    def start(self, *, kind: str, fingerprint: Mapping[str, str]) -> None:
        self._storage.start(kind=kind, fingerprint=fingerprint)

    def rows(self) -> Iterator[StateRow]:
        for lines in self._storage.state.manifest_lines():
            yield from _rows_of(lines[1:])

    def commit(self, rows: Sequence[StateRow]) -> int:
        blob = self._storage.blob
        if blob is None or not blob.upload.pending:
            return 0
        held = blob.upload.uploaded_entries
        if held > len(rows):
            # Parts hold entries whose rows are not recorded yet: wait for them.
            return 0
        self._storage.commit_parts(blob.upload, rows[:held])
        return held

    def clear(self) -> None:
        self._storage.state.clear()


class _S3File:
    """One object of a tree, gathered in memory and put whole on commit."""

    def __init__(self, tree: S3Tree, url: S3Url) -> None:
        self._tree = tree
        self._url = url
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._parts.append(data)

    def commit(self, *, mtime: datetime | None = None, mode: int | None = None) -> None:
        self._tree.put_object(self._url, b"".join(self._parts), mtime=mtime)
        self._parts = []

    def discard(self) -> None:
        self._parts = []


class S3Tree:
    """A prefix of a bucket, one object per file (a :class:`TreeStorage`).

    Each file is one PutObject: it appears whole or not at all. Puts run concurrently (up
    to :data:`_PUTS_IN_FLIGHT`); :meth:`sync` waits for every one, so a checkpoint commits
    its rows in one manifest only once all their objects are there.

    Args:
        url: the prefix (``s3://bucket/`` or ``s3://bucket/some/prefix/``).
        client: from :func:`~annopull._storage.s3.open_client`.
    """

    def __init__(self, url: S3Url, *, client: S3Client) -> None:
        if not url.is_prefix:
            url = S3Url(url.bucket, url.key + "/")
        self.url = url
        self.client = client
        self.state = _State(client, url)
        self._in_flight: deque[tuple[S3Url, Future[Any]]] = deque()

    def __repr__(self) -> str:
        return f"S3Tree({str(self.url)!r})"

    @property
    def description(self) -> str:
        return str(self.url)

    @property
    def state_path(self) -> Path:
        return _cache_path(self.url, "tree.journal")

    @property
    def remote_state(self) -> RemoteState:
        return _TreeState(self)

    def prepare(self) -> None:
        self.state.check()

    def create(self, name: str) -> _S3File:
        return _S3File(self, self.url.child(name))

    def put(self, name: str, data: Iterable[bytes], *, mtime: datetime | None = None) -> int:
        body = b"".join(data)
        self.put_object(self.url.child(name), body, mtime=mtime)
        return len(body)

    def put_object(self, url: S3Url, body: bytes, *, mtime: datetime | None) -> None:
        """Write one file; its time goes into ``x-amz-meta-mtime`` (S3 sets its own)."""
        metadata = {"mtime": mtime.isoformat()} if mtime is not None else None
        self._in_flight.append((url, self.client.put_soon(url, body, metadata=metadata)))
        while len(self._in_flight) > _PUTS_IN_FLIGHT:
            oldest, future = self._in_flight.popleft()
            self.client.wait(future, oldest)

    def sync(self) -> None:
        """Wait for every put: each object is durable once its PutObject returned."""
        while self._in_flight:
            url, future = self._in_flight.popleft()
            self.client.wait(future, url)


class _TreeState:
    """:class:`RemoteState` of an :class:`S3Tree`: every committed file is durable."""

    def __init__(self, tree: S3Tree) -> None:
        self._tree = tree

    @property
    def description(self) -> str:
        return self._tree.state.description

    @property
    def committed(self) -> int:
        return self._tree.state.rows

    def prepare(self) -> None:
        self._tree.state.check()
        self._tree.state_path.parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> RunHeader | None:
        header = self._tree.state.header()
        return None if header is None else _header_of(header, self.description)

    def start(self, *, kind: str, fingerprint: Mapping[str, str]) -> None:
        self._tree.state.start({"kind": kind, "fingerprint": dict(fingerprint)})

    def rows(self) -> Iterator[StateRow]:
        for lines in self._tree.state.manifest_lines():
            yield from _rows_of(lines[1:])

    def commit(self, rows: Sequence[StateRow]) -> int:
        if rows:
            self._tree.state.write_manifest({"parts": []}, rows)
        return len(rows)

    def clear(self) -> None:
        self._tree.state.clear()


class S3Download:
    """A downloaded file (an AnnoLab export) for a bucket: staged, checked, then put in place.

    The bytes stream into :attr:`staging`, a multipart upload at ``KEY.annopull/download.part``
    whose every part is recorded as it goes up, so an interrupted download resumes (HTTP
    Range) from any machine. Completing it makes the staged copy readable
    (:meth:`reader`, for the zip check); :meth:`promote` then copies it to ``KEY`` inside the
    store (no bytes through this machine) and removes it. The object at ``KEY`` appears only
    verified and whole, byte for byte what was downloaded.

    Args:
        url: the final object.
        client: from :func:`~annopull._storage.s3.open_client`.
        part_size: the staging upload's first parts' size.
    """

    def __init__(self, url: S3Url, *, client: S3Client, part_size: int = PART_SIZE) -> None:
        self.url = url
        self.client = client
        self.staging = S3Object(
            state_prefix(url).child("download.part"),
            client=client,
            journaled=False,
            part_size=part_size,
        )

    def __repr__(self) -> str:
        return f"S3Download({str(self.url)!r})"

    @property
    def description(self) -> str:
        return str(self.url)

    def reader(self) -> BinaryIO:
        """The staged (completed) download as a seekable file."""
        return self.client.open_reader(self.staging.url)

    def promote(self) -> None:
        """Copy the staged download to its key, then remove it."""
        self.client.copy(self.staging.url, self.url)
        self.client.delete([self.staging.url])
