"""The one exception tree of annopull.

::

    AnnopullError
    ├── ConfigError (ValueError)        bad settings, flags or credentials file
    ├── AuthError                       credentials refused (401/403 after one refetch)
    ├── ApiError                        the platform answered with a non-retryable error
    │   └── NotFoundError (LookupError) project / export / scene does not exist
    ├── TransferError                   retries exhausted, body cut, length or CRC mismatch
    ├── ExportFailedError               an AnnoLab export job ended ``errored``
    ├── ZipFormatError (ValueError)     an archive that cannot be written or read as asked
    │   └── UnsafeEntryError            a zip-slip name refused on extraction
    └── ResumeError                     a journal that does not match the command or the file

Every error carries its context as attributes (``url`` without its signature query,
``status``, ``attempts``, ``item``) and puts it into its one-line message. No secret
(token, key, client secret, URL signature) ever enters a message.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "AnnopullError",
    "ApiError",
    "AuthError",
    "ConfigError",
    "ExportFailedError",
    "NotFoundError",
    "ResumeError",
    "TransferError",
    "UnsafeEntryError",
    "ZipFormatError",
    "redact_url",
]


def redact_url(url: str) -> str:
    """Return ``url`` without its query and credentials: signed URLs carry secrets there."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class AnnopullError(Exception):
    """Base of every error annopull raises on purpose.

    Args:
        message: what went wrong, one line, for a person.
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
        self.reason = message
        self.url = redact_url(url) if url is not None else None
        self.status = status
        self.attempts = attempts
        self.item = item
        super().__init__(self._render())

    def _render(self) -> str:
        context = []
        if self.item is not None:
            context.append(f"item {self.item}")
        if self.status is not None:
            context.append(f"HTTP {self.status}")
        if self.url is not None:
            context.append(self.url)
        if self.attempts is not None:
            context.append(f"after {self.attempts} attempt{'s' if self.attempts != 1 else ''}")
        return f"{self.reason} ({', '.join(context)})" if context else self.reason


class ConfigError(AnnopullError, ValueError):
    """Settings, flags, or a credentials file that cannot be used."""


class AuthError(AnnopullError):
    """The platform refused the credentials."""


class ApiError(AnnopullError):
    """The platform answered with an error that retrying will not fix."""


class NotFoundError(ApiError, LookupError):
    """The project, export or scene asked for does not exist."""


class TransferError(AnnopullError):
    """A transfer failed for good: retries exhausted, body cut short, or data corrupt."""


class ExportFailedError(AnnopullError):
    """An AnnoLab export job ended in the ``errored`` state."""


class ZipFormatError(AnnopullError, ValueError):
    """An archive that cannot be written or read as asked."""


class UnsafeEntryError(ZipFormatError):
    """A zip entry whose name would escape the extraction folder."""


class ResumeError(AnnopullError):
    """A journal that does not match the command or the partial output beside it."""
