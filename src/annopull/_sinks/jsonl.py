"""JSON Lines output: one line per entry, its fields beside its parsed content."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterable, Mapping, Sequence
from pathlib import Path
from typing import Final

import anyio
import orjson

from annopull._errors import AnnopullError, ResumeError, TransferError
from annopull._sinks.base import EntryInfo, ObjectSink, SinkResult, run_shielded
from annopull._storage.base import Blob, ObjectStorage
from annopull._storage.local import LocalFile

__all__ = ["JsonlSink"]

#: A line's receipt: where it starts and where it ends in the file.
_RECEIPT: Final = struct.Struct("<QQ")


class JsonlSink(ObjectSink):
    """Writes ``{"scene_uuid":…, "annotation_type":…, "created":…, "content":{…}}`` lines.

    The fields are the item's (a Kognic annotation's above); the content is embedded as JSON.
    The file is written as ``<path>.part`` and renamed when complete; each line's end offset
    is its receipt, so a resume cuts off a torn last line and goes on.

    Args:
        path: the ``.jsonl`` file to produce, or any
            :class:`~annopull._storage.base.ObjectStorage`.
    """

    kind = "jsonl"

    def __init__(self, path: Path | str | ObjectStorage) -> None:
        super().__init__(path if isinstance(path, ObjectStorage) else LocalFile(Path(path)))
        self._blob: Blob | None = None

    def __repr__(self) -> str:
        return f"JsonlSink({self.description!r})"

    async def open(self) -> None:
        last = self.records.last_receipt() if self._resume else None
        end = _RECEIPT.unpack(last)[1] if last is not None else 0
        self._blob = await anyio.to_thread.run_sync(self._open_blob, end)

    def _open_blob(self, end: int) -> Blob:
        blob = self._storage.open(resume=self._resume)
        if self._resume:
            if blob.position < end:
                blob.close()
                raise ResumeError(
                    f"the unfinished file is {blob.position} bytes, its journal expects "
                    f"at least {end}",
                    item=self.description,
                )
            blob.truncate(end)
        return blob

    @property
    def _current(self) -> Blob:
        if self._blob is None:
            raise RuntimeError("JsonlSink is not open")
        return self._blob

    async def write(self, info: EntryInfo, chunks: AsyncIterable[bytes]) -> bytes:
        """Stream one entry into its line, never holding it whole (it may be gigabytes).

        JSON content is copied through with its line breaks turned into spaces (JSON allows
        no raw line break inside a string, so the document means the same) and checked
        cheaply: it must start with ``{`` or ``[`` and end with the matching bracket. Other
        content is stored as ``content_base64``, encoded as it streams. A failure cuts the
        line away again.
        """
        blob = self._current
        start = blob.position
        encoder = _StreamedJson(info) if info.json else _StreamedBase64(info)
        try:
            await anyio.to_thread.run_sync(blob.write, encoder.head())
            async for chunk in chunks:
                await anyio.to_thread.run_sync(blob.write, encoder.body(chunk))
            await anyio.to_thread.run_sync(_write_line_end, blob, encoder.tail())
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(blob.truncate, start)
            raise
        return _RECEIPT.pack(start, blob.position)

    async def write_many(
        self, entries: Sequence[tuple[EntryInfo, bytes]]
    ) -> list[bytes | AnnopullError]:
        """Encode and append every line in one worker-thread call."""
        blob = self._current
        # Shielded: a line is appended whole or not at all before anything awaits again.
        return await run_shielded(_append_lines, blob, entries)

    async def flush(self) -> None:
        await anyio.to_thread.run_sync(self._current.sync)

    async def close(self) -> SinkResult:
        blob = self._current
        size = blob.position
        await anyio.to_thread.run_sync(self._storage.publish, blob)
        return SinkResult(output=self.description, entries=self.records.count(), bytes_written=size)

    async def abort(self) -> None:
        if self._blob is not None:
            blob = self._blob
            await anyio.to_thread.run_sync(_sync_and_close, blob)


def _write_line_end(blob: Blob, data: bytes) -> None:
    """Write the last bytes of a line: the entry is whole (see ``Blob.mark_boundary``)."""
    blob.write(data)
    blob.mark_boundary()


def _sync_and_close(blob: Blob) -> None:
    try:
        blob.sync()
    finally:
        blob.close()


def _append_lines(
    blob: Blob, entries: Sequence[tuple[EntryInfo, bytes]]
) -> list[bytes | AnnopullError]:
    results: list[bytes | AnnopullError] = []
    for info, content in entries:
        try:
            line = _line(info, content)
        except TransferError as exc:
            results.append(exc)
            continue
        start = blob.position
        _write_line_end(blob, line)
        results.append(_RECEIPT.pack(start, blob.position))
    return results


def _line(info: EntryInfo, content: bytes) -> bytes:
    """One JSON line; JSON content is checked and embedded without re-encoding."""
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        if info.json:
            raise TransferError(f"content is not valid JSON: {exc}", item=info.key) from None
        return _base64_line(info, content)
    spans_lines = b"\n" in content or b"\r" in content
    if not info.json and spans_lines:
        # Bytes that are only incidentally JSON (a text file "123\n") must come back as they
        # were served: re-encoding the parsed value would lose them.
        return _base64_line(info, content)
    # A JSON document is spliced in as it came unless it spans lines (pretty-printed),
    # which would break the one-record-per-line promise.
    embedded = parsed if spans_lines else orjson.Fragment(content)
    return orjson.dumps({**info.fields, "content": embedded}) + b"\n"


def _base64_line(info: EntryInfo, content: bytes) -> bytes:
    encoded = base64.b64encode(content).decode()
    return orjson.dumps({**info.fields, "content_base64": encoded}) + b"\n"


class _StreamedJson:
    """A JSON document copied into a line piece by piece, checked at both ends."""

    def __init__(self, info: EntryInfo) -> None:
        self._info = info
        self._first = 0
        self._last = 0

    def head(self) -> bytes:
        return _prefix(self._info.fields, "content")

    def body(self, chunk: bytes) -> bytes:
        stripped = chunk.strip()
        if stripped:
            self._first = self._first or stripped[0]
            self._last = stripped[-1]
        return chunk.translate(_NO_LINE_BREAKS)

    def tail(self) -> bytes:
        if (self._first, self._last) not in _JSON_ENDS:
            raise TransferError("content is not a JSON document", item=self._info.key)
        return b"}\n"


class _StreamedBase64:
    """Bytes base64-encoded into a line as they stream (in whole 3-byte groups)."""

    def __init__(self, info: EntryInfo) -> None:
        self._info = info
        self._held = b""

    def head(self) -> bytes:
        return _prefix(self._info.fields, "content_base64") + b'"'

    def body(self, chunk: bytes) -> bytes:
        data = self._held + chunk
        cut = len(data) - len(data) % 3
        self._held = data[cut:]
        return base64.b64encode(data[:cut])

    def tail(self) -> bytes:
        return base64.b64encode(self._held) + b'"}\n'


def _prefix(fields: Mapping[str, str], key: str) -> bytes:
    """``{"field":…,"<key>":`` — the start of a line whose last value streams in."""
    opened = orjson.dumps(dict(fields))[:-1]
    return opened + (b"," if fields else b"") + orjson.dumps(key) + b":"


_NO_LINE_BREAKS = bytes.maketrans(b"\r\n", b"  ")
_JSON_ENDS = frozenset({(ord("{"), ord("}")), (ord("["), ord("]"))})
