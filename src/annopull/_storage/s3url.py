"""``s3://BUCKET/KEY`` names, apart from the S3 client.

Telling an output or a parts prefix by its name must not import the client (aiohttp, XML
parsing): every CLI run names its output, few name a bucket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from annopull._errors import ConfigError

__all__ = ["S3Url", "is_s3_url"]

_SCHEME: Final = "s3://"


def is_s3_url(text: str) -> bool:
    """Whether ``text`` names an object store location (``s3://…``)."""
    return text[:5].lower() == _SCHEME


@dataclass(frozen=True, slots=True)
class S3Url:
    """A bucket and a key (``""`` for the bucket itself; ending in ``/`` for a prefix)."""

    bucket: str
    key: str = ""

    @classmethod
    def parse(cls, text: str) -> S3Url:
        """``s3://bucket/some/key`` -> ``S3Url("bucket", "some/key")``.

        Raises:
            ConfigError: not an ``s3://`` URL, or no bucket named.
        """
        if not is_s3_url(text):
            raise ConfigError(f"not an s3:// URL: {text!r}")
        bucket, _, key = text[len(_SCHEME) :].partition("/")
        if not bucket or "?" in text or "#" in text:
            raise ConfigError(f"an object store URL is s3://BUCKET/KEY, got {text!r}")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"{_SCHEME}{self.bucket}/{self.key}"

    @property
    def is_prefix(self) -> bool:
        """Whether this names a folder-like prefix (the bucket root, or a key ending in ``/``)."""
        return self.key == "" or self.key.endswith("/")

    @property
    def name(self) -> str:
        """The last segment of the key (``out.zip`` of ``s3://b/x/out.zip``)."""
        return self.key.rstrip("/").rpartition("/")[2]

    @property
    def parent(self) -> S3Url:
        """The prefix that holds this key (``s3://b/x/`` of ``s3://b/x/out.zip``)."""
        head = self.key.rstrip("/").rpartition("/")[0]
        return S3Url(self.bucket, f"{head}/" if head else "")

    def child(self, name: str) -> S3Url:
        """The key ``name`` under this prefix (a ``/`` is added when missing)."""
        base = self.key if self.is_prefix else f"{self.key}/"
        return S3Url(self.bucket, base + name)
