"""The one exception tree of annopull.

::

    AnnopullError
    ├── ConfigError (ValueError)        bad settings, flags or credentials file
    ├── AuthError                       credentials refused (401/403 after one refetch)
    ├── ApiError                        the platform answered with a non-retryable error
    │   └── NotFoundError (LookupError) project / export / scene does not exist
    ├── TransferError                   a transfer failed for good (by cause below)
    │   ├── RequestTimeoutError (TimeoutError)     connect or read timeout, a stalled body
    │   ├── NetworkError (ConnectionError)         refused, reset, DNS, server disconnected
    │   ├── TruncatedBodyError                     body cut short, Content-Length mismatch
    │   ├── RetryableStatusError                   408/429/5xx until the attempts ran out
    │   ├── RetryBudgetExhaustedError              a host given up for the run (retry budget)
    │   └── InvalidResponseError                   an answer that cannot be parsed (bad JSON)
    ├── StorageError (OSError)          writing the output (local disk, object store) failed
    ├── ExportFailedError               an AnnoLab export job ended ``errored``
    ├── TransformError                  one item's transform or validation failed
    │   └── WorkerPoolError             the transform's worker processes keep dying (stops a run)
    ├── ZipFormatError (ValueError)     an archive that cannot be written or read as asked
    │   └── UnsafeEntryError            a zip-slip name refused on extraction
    └── ResumeError                     a journal that does not match the command or the file

Every error carries its context as attributes (``url`` without its signature query,
``status``, ``attempts``, ``item``; :class:`StorageError` also ``path``) and puts it into its
one-line message. No secret (token, key, client secret, URL signature) ever enters a message:
the message, however it was put together (an echoed error body, a lower layer's exception
text), is rendered through :func:`annopull._redact.redact`, and so is ``reason``.

The :class:`TransferError` subclasses name the cause of the *last* failed attempt, so a
caller can tell "the network is down" from "the server kept answering 503" without parsing
text; ``except TransferError`` still catches them all. The transport translates aiohttp and
OS errors into them in one place (``annopull._transport.http._classify``).
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from annopull._redact import redact

__all__ = [
    "AnnopullError",
    "ApiError",
    "AuthError",
    "ConfigError",
    "ExportFailedError",
    "InvalidResponseError",
    "NetworkError",
    "NotFoundError",
    "RequestTimeoutError",
    "ResumeError",
    "RetryBudgetExhaustedError",
    "RetryableStatusError",
    "StorageError",
    "TransferError",
    "TransformError",
    "TruncatedBodyError",
    "UnsafeEntryError",
    "WorkerPoolError",
    "ZipFormatError",
    "redact_url",
]


def redact_url(url: str) -> str:
    """Return ``url`` without its query and credentials: signed URLs carry secrets there."""
    parts = urlsplit(str(url))
    # Everything after the last "@" is the host; user and password before it are dropped.
    # Taken as written (not .hostname/.port) so an IPv6 host keeps its brackets and a bad
    # port cannot raise here.
    host = parts.netloc.rpartition("@")[2].lower()
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class AnnopullError(Exception):
    """Base of every error annopull raises on purpose.

    Args:
        message: what went wrong, one line, for a person; stored (as ``reason``) and shown
            with any secret in it masked.
        url: the request URL; stored and shown without its query string.
        status: the HTTP status of the last answer, if there was one.
        attempts: how many times the request was tried.
        item: the item (scene uuid, export, entry name) the error is about.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        attempts: int | None = None,
        item: str | None = None,
    ) -> None:
        self.reason = redact(message)
        self.url = redact(redact_url(url)) if url is not None else None
        self.status = status
        self.attempts = attempts
        self.item = item
        super().__init__(self._render())

    def _render(self) -> str:
        context = self._context()
        text = f"{self.reason} ({', '.join(context)})" if context else self.reason
        # The context too: an item name or a path could quote a secret as well.
        return redact(text)

    def _context(self) -> list[str]:
        context = []
        if self.item is not None:
            context.append(f"item {self.item}")
        if self.status is not None:
            context.append(f"HTTP {self.status}")
        if self.url is not None:
            context.append(self.url)
        if self.attempts is not None:
            context.append(f"after {self.attempts} attempt{'s' if self.attempts != 1 else ''}")
        return context


class ConfigError(AnnopullError, ValueError):
    """Settings, flags, or a credentials file that cannot be used."""


class AuthError(AnnopullError):
    """The platform refused the credentials."""


class ApiError(AnnopullError):
    """The platform answered with an error that retrying will not fix."""


class NotFoundError(ApiError, LookupError):
    """The project, export or scene asked for does not exist."""


class TransferError(AnnopullError):
    """A transfer failed for good: retries exhausted, body cut short, or data corrupt.

    The transport raises one of the subclasses, named for the cause; sinks and sources raise
    this class itself for an item whose content cannot be used.
    """


class RequestTimeoutError(TransferError, TimeoutError):
    """No connection within ``connect_timeout``, or no bytes within ``read_timeout``."""


class NetworkError(TransferError, ConnectionError):
    """The connection failed: refused, reset, name not resolved, or dropped by the server."""


class TruncatedBodyError(TransferError):
    """A body ended before its ``Content-Length`` (or its chunked or compressed framing)."""


class RetryableStatusError(TransferError):
    """The server kept answering a status worth retrying (408, 429, 5xx) until attempts ran out.

    ``status`` holds the last answer's code (also 416, should a resumed download's last
    attempt be refused its range).
    """


class InvalidResponseError(TransferError):
    """An answer that cannot be used as one: not valid JSON, or not even valid HTTP."""


class StorageError(AnnopullError, OSError):
    """Writing the output failed: the local disk, or an object store behind the sink.

    Also an :class:`OSError`, so code that handles disk trouble catches it. ``errno`` and
    ``filename`` of :class:`OSError` stay ``None``: the underlying OS error, if any, is the
    ``__cause__``.

    Args:
        message: what went wrong, one line, for a person.
        path: the file or object the write was for; shown in the message.
        url: the object store URL, if any; stored and shown without its query string.
        status: the HTTP status of an object store's answer, if there was one.
        attempts: how many times the write was tried.
        item: the item (scene uuid, export, entry name) being written.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        url: str | None = None,
        status: int | None = None,
        attempts: int | None = None,
        item: str | None = None,
    ) -> None:
        # Set before the base renders the message, which reads it.
        self.path = os.fspath(path) if path is not None else None
        super().__init__(message, url=url, status=status, attempts=attempts, item=item)

    def _context(self) -> list[str]:
        context = super()._context()
        if self.path is not None:
            # Next to the item: both say what was being written.
            context.insert(1 if self.item is not None else 0, f"path {self.path}")
        return context


class ExportFailedError(AnnopullError):
    """An AnnoLab export job ended in the ``errored`` state."""


class TransformError(AnnopullError):
    """One item's transform or validation failed: the function raised, returned what cannot
    be written, the document is not valid, or the worker holding it died."""


class WorkerPoolError(TransformError):
    """The worker processes of a transform keep dying (out of memory, a crash in native
    code): every item would fail the same way, so the run stops."""


class ZipFormatError(AnnopullError, ValueError):
    """An archive that cannot be written or read as asked."""


class UnsafeEntryError(ZipFormatError):
    """A zip entry whose name would escape the extraction folder."""


class ResumeError(AnnopullError):
    """A journal that does not match the command or the partial output beside it."""


class RetryBudgetExhaustedError(TransferError):
    """A host was given up: too many of its requests failed, or it stopped answering well.

    Raised for the request that ran out of the host's retry budget (or of ``host_wait_max``)
    and, from then on, at once for every request to that host: the run ends in bounded time.
    ``url`` is the request's; the message names the host and why.
    """
