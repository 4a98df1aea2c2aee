"""S3 (and S3-compatible stores): ``s3://`` URLs and a small blocking client.

The storages of :mod:`annopull._storage.bucket` and anything else that reads or writes a
bucket (a Ray driver's manifest, say) go through this module only::

    url = S3Url.parse("s3://bucket/backfill/out.zip")
    client = open_client(config.storage)        # endpoint from config or AWS_ENDPOINT_URL
    client.put(url.child("manifest.json"), b"{}")
    client.get(url)                              # None when there is no such object
    client.get_range(url, 0, 64)                 # a ranged read
    for obj in client.list_objects(url.parent):          # every object under a prefix
        ...

Every method blocks: call it from a worker thread (``anyio.to_thread.run_sync``), never on
an event loop. Errors are :class:`~annopull.StorageError` (the store failed: network, 5xx)
or :class:`~annopull.ConfigError` (no such bucket, access denied, no credentials: nothing a
retry fixes), one line naming ``s3://bucket/key``, never a credential.

Why a loop thread of its own: aiobotocore is async, the storage protocols block and are
called from worker threads, and the client (an aiohttp session) is bound to the loop it was
made on. ``anyio.from_thread.run`` would tie every client to one run's event loop, and work
only from that loop's worker threads; a storage made before the loop starts (by the CLI),
used by several ``anyio.run`` calls (a Ray driver), or from a plain thread would break. One
daemon thread runs one loop for every client of the process: a call from any thread is a
``run_coroutine_threadsafe`` and a wait, and S3 traffic never competes with the pull's loop.
"""

from __future__ import annotations

import asyncio
import atexit
import io
import os
import threading
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from annopull._errors import ConfigError, StorageError

if TYPE_CHECKING:
    from annopull._config import StorageConfig

__all__ = [
    "INSTALL_HINT",
    "ObjectInfo",
    "PartInfo",
    "PreconditionFailedError",
    "RangedReader",
    "S3Client",
    "S3Url",
    "close_clients",
    "is_s3_url",
    "open_client",
]

T = TypeVar("T")

INSTALL_HINT: Final = "pip install 'annopull[s3]'"
#: CopyObject's largest source; bigger objects are copied in parts of _COPY_PART.
_COPY_MAX: Final = 5 << 30
_COPY_PART: Final = 1 << 30
_SCHEME: Final = "s3://"
#: Answers that no retry fixes: the user's bucket, permissions or credentials.
_CONFIG_CODES: Final = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidBucketName",
        "AuthorizationHeaderMalformed",
        "PermanentRedirect",
        "ExpiredToken",
        "InvalidToken",
        "403",
    }
)


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


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object."""

    url: S3Url
    size: int
    etag: str


@dataclass(frozen=True, slots=True)
class PartInfo:
    """One uploaded part of a multipart upload."""

    number: int
    size: int
    etag: str


class PreconditionFailedError(StorageError):
    """A conditional write found the object already there (``If-None-Match: *``)."""


@dataclass(frozen=True, slots=True)
class _Settings:
    endpoint_url: str | None
    region: str | None
    addressing_style: str | None


class _LoopThread:
    """The one background event loop every S3 client of the process runs on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="annopull-s3", daemon=True)
                thread.start()
                self._loop = loop
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self.loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None:
            coro.close()
            # Waiting here would block that loop: the caller must use a worker thread.
            raise RuntimeError("S3Client methods block: call them from a worker thread")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
        return future.result()


_LOOP = _LoopThread()
_CLIENTS: dict[_Settings, S3Client] = {}
_CLIENTS_LOCK = threading.Lock()


def open_client(
    config: StorageConfig | None = None, *, env: Mapping[str, str] | None = None
) -> S3Client:
    """The process's client for these settings (made once, closed at exit).

    The endpoint is ``config.endpoint_url``, else ``AWS_ENDPOINT_URL``, else AWS itself;
    credentials and (without ``config.region``) the region come from the standard AWS
    chain: environment, ``~/.aws`` profiles, instance metadata.

    Args:
        config: the ``[storage]`` settings; ``None`` for defaults.
        env: where ``AWS_ENDPOINT_URL`` is read (``os.environ``).

    Raises:
        ConfigError: aiobotocore is not installed (the message names the pip command).
    """
    environ = os.environ if env is None else env
    settings = _Settings(
        endpoint_url=(config.endpoint_url if config else "") or environ.get("AWS_ENDPOINT_URL"),
        region=(config.region if config else "") or None,
        addressing_style=(config.addressing_style if config else "") or None,
    )
    _require_aiobotocore()
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(settings)
        if client is None:
            client = _CLIENTS[settings] = S3Client(settings)
        return client


def close_clients() -> None:
    """Close every client :func:`open_client` made (at exit; tests between servers)."""
    with _CLIENTS_LOCK:
        clients = list(_CLIENTS.values())
        _CLIENTS.clear()
    for client in clients:
        client.close()


atexit.register(close_clients)


def _require_aiobotocore() -> None:
    try:
        import aiobotocore  # noqa: F401
    except ImportError:
        raise ConfigError(f"s3:// outputs need aiobotocore: {INSTALL_HINT}") from None


class S3Client:
    """Blocking S3 calls over one aiobotocore client on the shared loop thread.

    Made by :func:`open_client`; safe to use from several threads at once.
    """

    def __init__(self, settings: _Settings) -> None:
        self._settings = settings
        self._context: Any = None
        self._client: Any = None
        self._ready = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Client(endpoint={self._settings.endpoint_url or 'aws'})"

    # -- buckets and small objects --------------------------------------------------------
    def check_bucket(self, url: S3Url) -> None:
        """Check the bucket exists and these credentials may use it.

        Raises:
            ConfigError: no such bucket, access denied, no credentials.
        """
        try:
            self._call(url, "head_bucket", Bucket=url.bucket)
        except StorageError as exc:
            # HEAD answers carry no error code, only the status.
            if exc.status == 404:
                raise ConfigError(f"no such bucket: s3://{url.bucket}/") from None
            raise

    def get(self, url: S3Url) -> bytes | None:
        """The whole object, or ``None`` when there is none (for small objects)."""
        return self._run(url, self._get(url, None))

    def get_range(self, url: S3Url, start: int, size: int) -> bytes:
        """Up to ``size`` bytes of the object from ``start`` (fewer at its end)."""
        if size <= 0:
            return b""
        data = self._run(url, self._get(url, f"bytes={start}-{start + size - 1}"))
        if data is None:
            raise StorageError("no such object", url=str(url))
        return data

    def head(self, url: S3Url) -> ObjectInfo | None:
        """The object's size and ETag, or ``None`` when there is none."""
        try:
            answer = self._call(url, "head_object", Bucket=url.bucket, Key=url.key)
        except StorageError as exc:
            if exc.status == 404:
                return None
            raise
        return ObjectInfo(url, int(answer["ContentLength"]), str(answer["ETag"]))

    def put(
        self,
        url: S3Url,
        data: bytes,
        *,
        if_none_match: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Write a whole object; return its ETag.

        Args:
            url: where.
            data: the object's bytes.
            if_none_match: refuse when the object exists (``If-None-Match: *``).
            metadata: ``x-amz-meta-*`` fields.

        Raises:
            PreconditionFailedError: ``if_none_match`` and the object exists.
        """
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if if_none_match else {}
        if metadata:
            extra["Metadata"] = dict(metadata)
        answer = self._call(url, "put_object", Bucket=url.bucket, Key=url.key, Body=data, **extra)
        return str(answer["ETag"])

    def open_reader(self, url: S3Url, *, buffer_size: int = 1 << 20) -> io.BufferedReader:
        """A seekable, buffered binary file over the object, read with ranged GETs.

        What a reader that needs to seek (``zipfile``) takes; each refill of the buffer is
        one request of ``buffer_size`` bytes.

        Raises:
            StorageError: there is no such object.
        """
        info = self.head(url)
        if info is None:
            raise StorageError("no such object", url=str(url))
        return io.BufferedReader(RangedReader(self, url, info.size), buffer_size=buffer_size)

    def put_soon(
        self, url: S3Url, data: bytes, *, metadata: Mapping[str, str] | None = None
    ) -> Future[Any]:
        """Start writing a whole object and return at once; :meth:`wait` for its end.

        Many small objects go up concurrently this way (one request each costs a round
        trip; one after the other they would be bound by latency, not bandwidth).
        """
        extra: dict[str, Any] = {"Metadata": dict(metadata)} if metadata else {}
        params = {"Bucket": url.bucket, "Key": url.key, "Body": data, **extra}
        return _LOOP.submit(self._operation("put_object", params))

    def wait(self, future: Future[Any], url: S3Url) -> None:
        """Wait for a :meth:`put_soon`; its failure as a :class:`StorageError` naming ``url``."""
        try:
            future.result()
        except (StorageError, ConfigError):
            raise
        except Exception as exc:
            raise _translate(exc, url) from exc

    def list_objects(self, prefix: S3Url) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix.key``, in key order, page by page."""
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call(
                prefix, "list_objects_v2", Bucket=prefix.bucket, Prefix=prefix.key, **extra
            )
            for obj in page.get("Contents", ()):
                url = S3Url(prefix.bucket, obj["Key"])
                yield ObjectInfo(url, int(obj["Size"]), str(obj.get("ETag", "")))
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def delete(self, urls: Sequence[S3Url]) -> None:
        """Delete objects (of one bucket), 1000 a request; missing ones are no error."""
        for start in range(0, len(urls), 1000):
            batch = urls[start : start + 1000]
            self._call(
                batch[0],
                "delete_objects",
                Bucket=batch[0].bucket,
                Delete={"Objects": [{"Key": u.key} for u in batch], "Quiet": True},
            )

    def copy(self, source: S3Url, target: S3Url) -> None:
        """Copy an object inside the store (no bytes pass through this machine).

        One CopyObject up to 5 GiB; above that (CopyObject's limit) a multipart copy of
        1 GiB ranges.
        """
        info = self.head(source)
        if info is None:
            raise StorageError("no such object to copy", url=str(source))
        origin = {"Bucket": source.bucket, "Key": source.key}
        if info.size <= _COPY_MAX:
            self._call(
                target, "copy_object", Bucket=target.bucket, Key=target.key, CopySource=origin
            )
            return
        upload_id = self.create_upload(target)
        parts = []
        try:
            for number, start in enumerate(range(0, info.size, _COPY_PART), start=1):
                end = min(start + _COPY_PART, info.size) - 1
                answer = self._call(
                    target,
                    "upload_part_copy",
                    Bucket=target.bucket,
                    Key=target.key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=origin,
                    CopySourceRange=f"bytes={start}-{end}",
                )
                etag = str(answer["CopyPartResult"]["ETag"])
                parts.append(PartInfo(number, end - start + 1, etag))
            self.complete_upload(target, upload_id, parts)
        except BaseException:
            self.abort_upload(target, upload_id)
            raise

    # -- multipart uploads ----------------------------------------------------------------
    def create_upload(self, url: S3Url) -> str:
        """Start a multipart upload of ``url``; return its upload id."""
        answer = self._call(url, "create_multipart_upload", Bucket=url.bucket, Key=url.key)
        return str(answer["UploadId"])

    def upload_part(self, url: S3Url, upload_id: str, number: int, data: bytes) -> PartInfo:
        """Upload part ``number`` (1-based; uploading a number again replaces that part)."""
        answer = self._call(
            url,
            "upload_part",
            Bucket=url.bucket,
            Key=url.key,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
        )
        return PartInfo(number, len(data), str(answer["ETag"]))

    def list_parts(self, url: S3Url, upload_id: str) -> list[PartInfo] | None:
        """The upload's parts, or ``None`` when the upload no longer exists."""
        parts: list[PartInfo] = []
        marker = 0
        while True:
            try:
                page = self._call(
                    url,
                    "list_parts",
                    Bucket=url.bucket,
                    Key=url.key,
                    UploadId=upload_id,
                    PartNumberMarker=marker,
                )
            except StorageError as exc:
                if exc.status == 404:
                    return None
                raise
            parts += [
                PartInfo(int(p["PartNumber"]), int(p["Size"]), str(p["ETag"]))
                for p in page.get("Parts", ())
            ]
            if not page.get("IsTruncated"):
                return parts
            marker = int(page["NextPartNumberMarker"])

    def complete_upload(self, url: S3Url, upload_id: str, parts: Sequence[PartInfo]) -> None:
        """Join ``parts`` into the object (it appears whole, at once)."""
        self._call(
            url,
            "complete_multipart_upload",
            Bucket=url.bucket,
            Key=url.key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]},
        )

    def abort_upload(self, url: S3Url, upload_id: str) -> None:
        """Drop an upload and its parts (none stay billed); a gone upload is no error."""
        try:
            self._call(
                url, "abort_multipart_upload", Bucket=url.bucket, Key=url.key, UploadId=upload_id
            )
        except StorageError as exc:
            if exc.status != 404:
                raise

    def uploads(self, prefix: S3Url) -> list[tuple[S3Url, str]]:
        """Unfinished multipart uploads under ``prefix``: ``(url, upload id)`` pairs."""
        found: list[tuple[S3Url, str]] = []
        extra: dict[str, str] = {}
        while True:
            page = self._call(
                prefix, "list_multipart_uploads", Bucket=prefix.bucket, Prefix=prefix.key, **extra
            )
            for upload in page.get("Uploads", ()):
                found.append((S3Url(prefix.bucket, upload["Key"]), str(upload["UploadId"])))
            if not page.get("IsTruncated"):
                return found
            extra = {
                "KeyMarker": page["NextKeyMarker"],
                "UploadIdMarker": page["NextUploadIdMarker"],
            }

    def close(self) -> None:
        """Close the connection pool (the client opens it again when used)."""
        with self._ready:
            context, self._context, self._client = self._context, None, None
        if context is not None:
            _LOOP.run(context.__aexit__(None, None, None))

    # -- plumbing -------------------------------------------------------------------------
    def _call(self, url: S3Url, operation: str, **params: Any) -> Any:
        return self._run(url, self._operation(operation, params))

    async def _operation(self, operation: str, params: dict[str, Any]) -> Any:
        client = await self._connected()
        return await getattr(client, operation)(**params)

    async def _get(self, url: S3Url, byte_range: str | None) -> bytes | None:
        client = await self._connected()
        extra = {"Range": byte_range} if byte_range else {}
        try:
            answer = await client.get_object(Bucket=url.bucket, Key=url.key, **extra)
        except Exception as exc:
            if _code_of(exc) in ("NoSuchKey", "404"):
                return None
            raise
        async with answer["Body"] as body:
            data: bytes = await body.read()
        return data

    async def _connected(self) -> Any:
        # Runs on the loop thread only, so no lock is needed around the creation itself.
        if self._client is None:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session

            settings = self._settings
            config = AioConfig(
                retries={"max_attempts": 5, "mode": "standard"},
                s3={"addressing_style": settings.addressing_style or "auto"},
                max_pool_connections=32,
            )
            self._context = get_session().create_client(
                "s3",
                endpoint_url=settings.endpoint_url,
                region_name=settings.region,
                config=config,
            )
            self._client = await self._context.__aenter__()
        return self._client

    def _run(self, url: S3Url, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return _LOOP.run(coro)
        except (StorageError, ConfigError):
            raise
        except Exception as exc:
            raise _translate(exc, url) from exc


class RangedReader(io.RawIOBase):
    """An object as a raw, seekable, read-only file; see :meth:`S3Client.open_reader`."""

    def __init__(self, client: S3Client, url: S3Url, size: int) -> None:
        super().__init__()
        self._client = client
        self._url = url
        self._size = size
        self._position = 0
        self.name = str(url)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        size = min(len(buffer), self._size - self._position)
        if size <= 0:
            return 0
        data = self._client.get_range(self._url, self._position, size)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)


def _code_of(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status else None
    return None


def _translate(exc: Exception, url: S3Url) -> Exception:
    """An aiobotocore failure as annopull's one-line error naming ``url`` (no credentials:
    botocore's messages name codes and keys, never secrets, and redact() runs over them)."""
    from botocore.exceptions import NoCredentialsError, NoRegionError, PartialCredentialsError

    where = str(url)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return ConfigError(
            f"no usable AWS credentials for {where}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or a profile (AWS_PROFILE)"
        )
    if isinstance(exc, NoRegionError):
        return ConfigError(f"no AWS region for {where}: set AWS_REGION or [storage] region")
    code, status = _code_of(exc), _status_of(exc)
    if code in _CONFIG_CODES:
        what = {"NoSuchBucket": "no such bucket", "AccessDenied": "access denied"}.get(code, code)
        if code == "403":
            what = "access denied"
        return ConfigError(f"{what}: {where}")
    if code in ("PreconditionFailed", "412") or status == 412:
        return PreconditionFailedError("the object already exists", url=where, status=412)
    if code:
        message = str(getattr(exc, "response", {}).get("Error", {}).get("Message", "")) or code
        return StorageError(f"object store refused: {code}: {message}", url=where, status=status)
    return StorageError(f"object store unreachable: {exc}", url=where)
