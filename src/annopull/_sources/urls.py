"""A list of URLs as a pipeline source: one entry per URL, its body as the server sent it.

The list has one URL a line, optionally ``URL<TAB>NAME``; blank lines and lines whose first
non-blank character is ``#`` are ignored. The whole list is read and checked before anything
is fetched, so a malformed line stops the run (:class:`~annopull.ConfigError` naming the
line) before any output exists.

::

    LIST ─> read_url_list ─> UrlList (checked, digested) ─> UrlSource ─> pull(source, sink)

Identity and names:

- an entry's *name* is NAME, else the last segment of the URL's path, percent-decoded
  (``/`` and control characters in it become ``_``); a path that ends in ``/`` (or is empty)
  gives ``index``. The pipeline makes names unique (``a.json``, ``a (2).json``).
- an entry's *key* (what resume, ``--shard`` and de-duplication go by) is NAME when given,
  else the URL. A signed URL's query is a secret: keys, reports and the journal hold it only
  as a digest. So a regenerated list of signed URLs *without* NAMEs is another list (a resume
  is refused and a fresh run fetches everything again); give NAMEs to keep keys stable.
- the list's *digest* (the resume fingerprint) covers each entry's key and its URL without the
  query, in order: a list regenerated with fresh signatures and the same NAMEs resumes.

No Authorization header is ever sent: URLs with credentials (``user:pass@``) are refused,
since aiohttp would turn them into one.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final
from urllib.parse import unquote, urlsplit

import anyio

from annopull._errors import ConfigError, redact_url
from annopull._pipeline.pull import Item, PullReport, Selection, pull_through
from annopull._progress import Progress
from annopull._sinks.base import Sink
from annopull._sources.lists import LineError, list_lines, open_list
from annopull._transport.http import ByteTarget, Transport

__all__ = ["UrlEntry", "UrlItem", "UrlList", "UrlSource", "read_url_list"]

#: The name of an entry whose URL path ends in ``/`` (a web server's directory index).
INDEX_NAME = "index"
#: Items listed between two checkpoints, so a long run of skipped items (a resume of a big
#: list) still lets signals and progress through.
_CHECKPOINT_EVERY = 1024
#: Characters of a query digest in a key: enough to tell signed URLs apart, no secret.
_QUERY_DIGEST_CHARS = 16
#: Control characters (Unicode category Cc) and the line and paragraph separators.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: What cannot stay in a name made from one path segment.
_NOT_IN_NAME: Final = re.compile(r"[/\\\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SPACE: Final = re.compile(r"\s")


@dataclass(frozen=True, slots=True, repr=False)
class UrlEntry:
    """One line of a URL list: where to fetch, and the name it was given (if any).

    Args:
        url: the URL, as written (it may be signed: it is never shown whole).
        given_name: the NAME after the TAB, or ``None``.
    """

    url: str
    given_name: str | None = None

    def __repr__(self) -> str:
        return f"UrlEntry({redact_url(self.url)!r}, given_name={self.given_name!r})"

    @property
    def name(self) -> str:
        """The wanted entry name: NAME, else the URL path's last segment (``index`` if none)."""
        return self.given_name if self.given_name is not None else _name_from_url(self.url)

    @property
    def key(self) -> str:
        """The entry's identity for resume, shards and de-duplication: NAME, else the URL."""
        if self.given_name is not None:
            return self.given_name
        return _key(self.url, redact_url(self.url))


@dataclass(frozen=True, slots=True, repr=False)
class UrlList:
    """A checked list of URLs and the digest a resume must match.

    Make one with :meth:`from_lines` or :func:`read_url_list`.

    Args:
        entries: the entries, in list order (comments and blank lines gone).
        digest: SHA-256 (hex) of the entries' keys and URLs without their queries.
        origin: where the list came from (a path, ``<stdin>``), for messages.
    """

    entries: Sequence[UrlEntry]
    digest: str
    origin: str = "<list>"

    def __repr__(self) -> str:
        return f"UrlList({self.origin!r}, {len(self.entries)} URLs)"

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[UrlEntry]:
        return iter(self.entries)

    @classmethod
    def from_lines(cls, lines: Iterable[str | bytes], *, origin: str = "<list>") -> UrlList:
        """Parse and check every line of a URL list.

        Args:
            lines: the list's lines, with or without their line ends; ``bytes`` are UTF-8
                (a byte order mark on the first line is dropped).
            origin: the list's name in messages (``origin:LINE: ...``).

        Raises:
            ConfigError: a line is malformed (not http/https, no host, a bad port, a TAB with
                an empty NAME, control characters, ...), or a NAME is given to two URLs.
        """
        entries: list[UrlEntry] = []
        # Only NAMEs can collide with another URL: an unnamed URL listed twice is the same
        # item, which the pipeline fetches once.
        named: dict[str, int] = {}
        digest = hashlib.sha256()
        for number, line in list_lines(lines, origin=origin):
            try:
                entry = _parse_line(line)
                if entry.given_name is not None:
                    first = named.setdefault(entry.given_name, len(entries))
                    if first != len(entries) and entries[first].url != entry.url:
                        raise LineError(
                            f"NAME {entry.given_name!r} is already given to another URL"
                        )
            except LineError as exc:
                raise ConfigError(f"{origin}:{number}: {exc}") from None
            entries.append(entry)
            redacted = redact_url(entry.url)
            key = entry.given_name if entry.given_name is not None else _key(entry.url, redacted)
            digest.update(f"{key}\t{redacted}\n".encode("utf-8", "replace"))
        return cls(entries=tuple(entries), digest=digest.hexdigest(), origin=origin)


def read_url_list(path: str | os.PathLike[str], *, stdin: BinaryIO | None = None) -> UrlList:
    """Read and check a URL list from a file, or from standard input for ``"-"``.

    Standard input is read to its end first: the list is checked whole before anything is
    fetched.

    Args:
        path: the list file, or ``"-"``.
        stdin: what ``"-"`` reads (``sys.stdin``'s bytes when omitted).

    Raises:
        ConfigError: the file cannot be read, or a line is malformed.
    """
    with open_list(path, what="URL list", stdin=stdin) as (lines, origin):
        return UrlList.from_lines(lines, origin=origin)


def _name_from_url(url: str) -> str:
    """The last segment of ``url``'s path, percent-decoded, as one file name.

    ``/``, ``\\`` and control characters in the decoded segment become ``_``; an empty
    segment (a path ending in ``/``), ``.`` or ``..`` gives ``index``.
    """
    segment = urlsplit(url).path.rpartition("/")[2]
    name = _NOT_IN_NAME.sub("_", unquote(segment, errors="replace"))
    return INDEX_NAME if name in ("", ".", "..") else name


def _key(url: str, redacted: str) -> str:
    """An item key for ``url``: ``redacted`` (its form without query), plus a query digest.

    Two URLs that differ only in their query (signatures, say) get different keys; the
    query itself never reaches a journal, a report or a message.
    """
    query = urlsplit(url).query
    if not query:
        return redacted
    digest = hashlib.sha256(query.encode("utf-8", "replace")).hexdigest()
    return f"{redacted} (query sha256 {digest[:_QUERY_DIGEST_CHARS]})"


@dataclass(frozen=True, slots=True, kw_only=True)
class UrlItem(Item):
    """One URL as the pipeline sees it."""

    url: str = field(repr=False)


class UrlSource:
    """A :class:`UrlList` as a source of the pull pipeline.

    Bodies may be anything (``json=False``): JSON Lines output embeds JSON bodies and stores
    others base64-encoded. JSON Lines fields are ``url`` (without its query) and ``name``.

    Args:
        transport: the transport every fetch goes through (retries, rate limit, timeouts).
        urls: the checked list.
    """

    def __init__(self, *, transport: Transport, urls: UrlList) -> None:
        self._transport = transport
        self._urls = urls

    def __repr__(self) -> str:
        return f"UrlSource({self._urls!r})"

    @property
    def fingerprint(self) -> Mapping[str, str]:
        return {"source": "urls", "list": self._urls.digest}

    async def items(self) -> AsyncGenerator[UrlItem, None]:
        for index, entry in enumerate(self._urls.entries, start=1):
            yield _item(entry)
            if index % _CHECKPOINT_EVERY == 0:
                await anyio.lowlevel.checkpoint()

    async def fetch(
        self, item: UrlItem, target: ByteTarget, *, on_bytes: Callable[[int], None]
    ) -> None:
        await self._transport.download(item.url, target, on_bytes=on_bytes, item=item.key)

    async def download(
        self,
        *,
        sink: Sink,
        selection: Selection | None = None,
        resume: bool = False,
        progress: Progress | None = None,
        spool_dir: Path | None = None,
    ) -> PullReport:
        """Fetch every (selected) URL into ``sink`` and report what happened.

        Args:
            sink: where entries go (:class:`ZipSink`, :class:`DirectorySink`, :class:`JsonlSink`).
            selection: filters (a shard; ``since`` needs versions, which URLs have none).
            resume: continue the interrupted run whose journal is beside the output.
            progress: where progress goes.
            spool_dir: where bodies larger than the engine's ``spool_memory`` wait on disk.
        """
        return await pull_through(
            self._transport,
            self,
            sink,
            selection=selection,
            resume=resume,
            progress=progress,
            spool_dir=spool_dir,
        )


def _item(entry: UrlEntry) -> UrlItem:
    name = entry.name
    redacted = redact_url(entry.url)
    key = entry.given_name if entry.given_name is not None else _key(entry.url, redacted)
    return UrlItem(
        key=key,
        name=name,
        fields={"url": redacted, "name": name},
        json=False,
        url=entry.url,
    )


def _control_in(text: str) -> str | None:
    """The first control character of ``text``, as ``U+XXXX``, or ``None``."""
    found = _CONTROL.search(text)
    return None if found is None else f"U+{ord(found.group()):04X}"


def _parse_line(line: str) -> UrlEntry:
    """The entry a (meaningful) line holds.

    Messages never echo the URL: its query, or a ``user:pass@``, may be a secret.
    """
    url, tab, name_part = line.partition("\t")
    url = url.strip()
    name: str | None = None
    if tab:
        if "\t" in name_part:
            raise LineError("more than one TAB (a line is URL or URL<TAB>NAME)")
        name = name_part.strip()
        if not name:
            raise LineError("a TAB with an empty NAME after it")
        if (control := _control_in(name)) is not None:
            raise LineError(f"control character {control} in the NAME")
        if all(s in ("", ".", "..") for s in name.replace("\\", "/").split("/")):
            raise LineError(f"NAME {name!r} names no file")
    if (control := _control_in(url)) is not None:
        raise LineError(f"control character {control} in the URL")
    if _SPACE.search(url):
        raise LineError("a space in the URL (write it as %20; separate a NAME with a TAB)")
    _check_url(url)
    return UrlEntry(url, name)


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise LineError(f"not a URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        scheme = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise LineError(f"not an http or https URL ({scheme})")
    if parts.username is not None or parts.password is not None:
        raise LineError(
            "credentials in the URL (user:password@) are refused: they would be sent as an "
            "Authorization header"
        )
    if not parts.hostname:
        raise LineError("the URL has no host")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        shown = parts.netloc.rpartition(":")[2][:20]
        raise LineError(f"bad port {shown!r} (a port is 1 to 65535)")
