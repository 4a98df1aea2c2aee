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

Why a loop thread of its own: the client is async (aiohttp), the storage protocols block
and are called from worker threads, and an aiohttp session is bound to the loop it was made
on. ``anyio.from_thread.run`` would tie every client to one run's event loop, and work
only from that loop's worker threads; a storage made before the loop starts (by the CLI),
used by several ``anyio.run`` calls (a Ray driver), or from a plain thread would break. One
daemon thread runs one loop for every client of the process: a call from any thread is a
``run_coroutine_threadsafe`` and a wait, and S3 traffic never competes with the pull's loop.

Why no SDK: botocore's import, service model and endpoint rules cost ~25 MiB, half of a
whole pull to a local zip. The dozen calls used here are plain signed HTTP requests
(:mod:`annopull._storage.aws` signs them) with small XML answers read by the stdlib.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import hashlib
import io
import os
import random
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypedDict, TypeVar, Unpack
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import aiohttp
from yarl import URL

from annopull._errors import AnnopullError, ConfigError, StorageError
from annopull._storage.aws import UNSIGNED_PAYLOAD, CredentialSource, encode_query, region_of, sign
from annopull._storage.s3url import S3Url

if TYPE_CHECKING:
    from annopull._config import StorageConfig

__all__ = [
    "ObjectInfo",
    "PartInfo",
    "PreconditionFailedError",
    "RangedReader",
    "S3Client",
    "S3Url",
    "close_clients",
    "open_client",
]

T = TypeVar("T")

_XMLNS: Final = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
#: botocore's "standard" retry mode: 5 attempts, capped exponential backoff, full jitter.
_ATTEMPTS: Final = 5
_BACKOFF: Final = 0.25
_BACKOFF_CAP: Final = 20.0
_POOL: Final = 32
#: Bodies from this size are sent as slices of _SLICE bytes (see S3Client._send).
_STREAM_FROM: Final = 1 << 20
_SLICE: Final = 256 << 10
_CONNECT_TIMEOUT: Final = 30.0
_READ_TIMEOUT: Final = 120.0
#: Codes of a store asking to slow down (retried like a 5xx).
_THROTTLED: Final = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout"})
#: CopyObject's largest source; bigger objects are copied in parts of _COPY_PART.
_COPY_MAX: Final = 5 << 30
_COPY_PART: Final = 1 << 30
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
#: Keyed by the settings and the environment read (the client holds it: its id stays unique).
_CLIENTS: dict[tuple[_Settings, int], S3Client] = {}
_CLIENTS_LOCK = threading.Lock()


def open_client(
    config: StorageConfig | None = None, *, env: Mapping[str, str] | None = None
) -> S3Client:
    """The process's client for these settings (made once, closed at exit).

    The endpoint is ``config.endpoint_url``, else ``AWS_ENDPOINT_URL``, else AWS itself;
    credentials and (without ``config.region``) the region come from the standard AWS
    chain: environment, ``~/.aws`` profiles, then (through botocore, when installed) web
    identity, SSO and instance metadata.

    Args:
        config: the ``[storage]`` settings; ``None`` for defaults.
        env: where ``AWS_*`` variables are read (``os.environ``).
    """
    environ = os.environ if env is None else env
    settings = _Settings(
        endpoint_url=(config.endpoint_url if config else "") or environ.get("AWS_ENDPOINT_URL"),
        region=(config.region if config else "") or None,
        addressing_style=(config.addressing_style if config else "") or None,
    )
    with _CLIENTS_LOCK:
        key = (settings, id(environ))
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = S3Client(settings, env=environ)
        return client


def close_clients() -> None:
    """Close every client :func:`open_client` made (at exit; tests between servers)."""
    with _CLIENTS_LOCK:
        clients = list(_CLIENTS.values())
        _CLIENTS.clear()
    for client in clients:
        client.close()


atexit.register(close_clients)


class _Options(TypedDict, total=False):
    """What a call sends besides its method and URL (see S3Client._request)."""

    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes | bytearray
    xml: bytes


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def xml(self) -> ElementTree.Element:
        """The answer's document (namespaces dropped, as every store's differ)."""
        document = _parse_xml(self.body)
        if document is None:
            raise StorageError(f"object store answered no XML document: {self.body[:80]!r}")
        return document


class S3Client:
    """Blocking S3 calls, signed requests over one aiohttp session on the shared loop thread.

    Made by :func:`open_client`; safe to use from several threads at once.
    """

    def __init__(self, settings: _Settings, *, env: Mapping[str, str] | None = None) -> None:
        self._settings = settings
        environ = os.environ if env is None else env
        self._region = settings.region or region_of(environ)
        endpoint = settings.endpoint_url or f"https://s3.{self._region}.amazonaws.com"
        parts = urlsplit(endpoint.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"an S3 endpoint is http(s)://HOST[:PORT], got {endpoint!r}")
        self._scheme, self._netloc = parts.scheme, parts.netloc
        style = settings.addressing_style or "auto"
        # Custom endpoints (MinIO, moto, most S3-compatible stores) resolve no bucket names.
        self._virtual = style == "virtual" or (style == "auto" and not settings.endpoint_url)
        self._credentials = CredentialSource(environ)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"S3Client(endpoint={self._settings.endpoint_url or 'aws'})"

    # -- buckets and small objects --------------------------------------------------------
    def check_bucket(self, url: S3Url) -> None:
        """Check the bucket exists and these credentials may use it.

        Raises:
            ConfigError: no such bucket, access denied, no credentials.
        """
        try:
            self._call(S3Url(url.bucket), "HEAD")
        except StorageError as exc:
            # HEAD answers carry no error code, only the status.
            if exc.status == 404:
                raise ConfigError(f"no such bucket: s3://{url.bucket}/") from None
            raise

    def get(self, url: S3Url) -> bytes | None:
        """The whole object, or ``None`` when there is none (for small objects)."""
        return self._get(url, {})

    def get_range(self, url: S3Url, start: int, size: int) -> bytes:
        """Up to ``size`` bytes of the object from ``start`` (fewer at its end)."""
        if size <= 0:
            return b""
        data = self._get(url, {"Range": f"bytes={start}-{start + size - 1}"})
        if data is None:
            raise StorageError("no such object", url=str(url))
        return data

    def head(self, url: S3Url) -> ObjectInfo | None:
        """The object's size and ETag, or ``None`` when there is none."""
        try:
            answer = self._call(url, "HEAD")
        except StorageError as exc:
            if exc.status == 404:
                return None
            raise
        return ObjectInfo(url, int(answer.headers["Content-Length"]), answer.headers["ETag"])

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
        headers = {"If-None-Match": "*"} if if_none_match else {}
        return _LOOP.run(self._put(url, data, headers, metadata))

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
    ) -> Future[str]:
        """Start writing a whole object and return at once; :meth:`wait` for its end.

        Many small objects go up concurrently this way (one request each costs a round
        trip; one after the other they would be bound by latency, not bandwidth).
        """
        return _LOOP.submit(self._put(url, data, {}, metadata))

    def wait(self, future: Future[Any], url: S3Url) -> None:
        """Wait for a :meth:`put_soon`; its failure as a :class:`StorageError` naming ``url``."""
        try:
            future.result()
        except (StorageError, ConfigError):
            raise
        except Exception as exc:
            raise StorageError(f"object store unreachable: {exc}", url=str(url)) from exc

    def list_objects(self, prefix: S3Url, *, page_size: int = 1000) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix.key``, in key order, page by page.

        Args:
            prefix: the bucket and key prefix.
            page_size: keys a request (S3's most, 1000, unless a test wants more pages).
        """
        query = {"list-type": "2", "prefix": prefix.key, "max-keys": str(page_size)}
        while True:
            page = self._call(S3Url(prefix.bucket), "GET", query=query).xml()
            for obj in page.iterfind("Contents"):
                url = S3Url(prefix.bucket, obj.findtext("Key", ""))
                yield ObjectInfo(url, int(obj.findtext("Size", "0")), obj.findtext("ETag", ""))
            if page.findtext("IsTruncated") != "true":
                return
            query = query | {"continuation-token": page.findtext("NextContinuationToken", "")}

    def delete(self, urls: Sequence[S3Url]) -> None:
        """Delete objects (of one bucket), 1000 a request; missing ones are no error."""
        for start in range(0, len(urls), 1000):
            batch = urls[start : start + 1000]
            objects = "".join(f"<Object><Key>{escape(u.key)}</Key></Object>" for u in batch)
            body = f"<Delete {_XMLNS}><Quiet>true</Quiet>{objects}</Delete>".encode()
            answer = self._call(S3Url(batch[0].bucket), "POST", query={"delete": ""}, xml=body)
            failed = answer.xml().find("Error")
            if failed is not None:
                where = S3Url(batch[0].bucket, failed.findtext("Key", ""))
                code, message = failed.findtext("Code", ""), failed.findtext("Message", "")
                raise _error(where, answer.status, code, message)

    def copy(self, source: S3Url, target: S3Url) -> None:
        """Copy an object inside the store (no bytes pass through this machine).

        One CopyObject up to 5 GiB; above that (CopyObject's limit) a multipart copy of
        1 GiB ranges.
        """
        info = self.head(source)
        if info is None:
            raise StorageError("no such object to copy", url=str(source))
        origin = {"x-amz-copy-source": quote(f"{source.bucket}/{source.key}", safe="/~")}
        if info.size <= _COPY_MAX:
            self._call(target, "PUT", headers=origin)
            return
        upload_id = self.create_upload(target)
        parts = []
        try:
            for number, start in enumerate(range(0, info.size, _COPY_PART), start=1):
                end = min(start + _COPY_PART, info.size) - 1
                headers = origin | {"x-amz-copy-source-range": f"bytes={start}-{end}"}
                query = {"partNumber": str(number), "uploadId": upload_id}
                result = self._call(target, "PUT", query=query, headers=headers).xml()
                parts.append(PartInfo(number, end - start + 1, result.findtext("ETag", "")))
            self.complete_upload(target, upload_id, parts)
        except BaseException:
            self.abort_upload(target, upload_id)
            raise

    # -- multipart uploads ----------------------------------------------------------------
    def create_upload(self, url: S3Url) -> str:
        """Start a multipart upload of ``url``; return its upload id."""
        answer = self._call(url, "POST", query={"uploads": ""}, xml=b"")
        return answer.xml().findtext("UploadId", "")

    def upload_part(
        self, url: S3Url, upload_id: str, number: int, data: bytes | bytearray
    ) -> PartInfo:
        """Upload part ``number`` (1-based; uploading a number again replaces that part).

        ``data`` is sent as it is, not copied (a ``bytearray`` the caller no longer
        changes is fine): the part's bytes are held once.
        """
        query = {"partNumber": str(number), "uploadId": upload_id}
        answer = self._call(url, "PUT", query=query, body=data)
        return PartInfo(number, len(data), answer.headers["ETag"])

    def list_parts(
        self, url: S3Url, upload_id: str, *, page_size: int = 1000
    ) -> list[PartInfo] | None:
        """The upload's parts, or ``None`` when the upload no longer exists.

        Args:
            url: the object being uploaded.
            upload_id: its upload.
            page_size: parts a request (S3's most, 1000, unless a test wants more pages).
        """
        parts: list[PartInfo] = []
        query = {"uploadId": upload_id, "max-parts": str(page_size)}
        while True:
            try:
                page = self._call(url, "GET", query=query).xml()
            except StorageError as exc:
                if exc.status == 404:
                    return None
                raise
            parts += [
                PartInfo(
                    int(p.findtext("PartNumber", "0")),
                    int(p.findtext("Size", "0")),
                    p.findtext("ETag", ""),
                )
                for p in page.iterfind("Part")
            ]
            if page.findtext("IsTruncated") != "true":
                return parts
            query = query | {"part-number-marker": page.findtext("NextPartNumberMarker", "")}

    def complete_upload(self, url: S3Url, upload_id: str, parts: Sequence[PartInfo]) -> None:
        """Join ``parts`` into the object (it appears whole, at once)."""
        listed = "".join(
            f"<Part><PartNumber>{p.number}</PartNumber><ETag>{escape(p.etag)}</ETag></Part>"
            for p in parts
        )
        body = f"<CompleteMultipartUpload {_XMLNS}>{listed}</CompleteMultipartUpload>".encode()
        self._call(url, "POST", query={"uploadId": upload_id}, xml=body)

    def abort_upload(self, url: S3Url, upload_id: str) -> None:
        """Drop an upload and its parts (none stay billed); a gone upload is no error."""
        try:
            self._call(url, "DELETE", query={"uploadId": upload_id})
        except StorageError as exc:
            if exc.status != 404:
                raise

    def uploads(self, prefix: S3Url) -> list[tuple[S3Url, str]]:
        """Unfinished multipart uploads under ``prefix``: ``(url, upload id)`` pairs."""
        found: list[tuple[S3Url, str]] = []
        query = {"uploads": "", "prefix": prefix.key}
        while True:
            page = self._call(S3Url(prefix.bucket), "GET", query=query).xml()
            for upload in page.iterfind("Upload"):
                url = S3Url(prefix.bucket, upload.findtext("Key", ""))
                found.append((url, upload.findtext("UploadId", "")))
            if page.findtext("IsTruncated") != "true":
                return found
            query = query | {
                "key-marker": page.findtext("NextKeyMarker", ""),
                "upload-id-marker": page.findtext("NextUploadIdMarker", ""),
            }

    def close(self) -> None:
        """Close the connection pool (the client opens it again when used)."""
        session, self._session = self._session, None
        if session is not None:
            _LOOP.run(session.close())

    # -- plumbing -------------------------------------------------------------------------
    def _get(self, url: S3Url, headers: dict[str, str]) -> bytes | None:
        try:
            return self._call(url, "GET", headers=headers).body
        except StorageError as exc:
            if exc.status == 404:
                return None
            raise

    async def _put(
        self,
        url: S3Url,
        data: bytes,
        headers: dict[str, str],
        metadata: Mapping[str, str] | None,
    ) -> str:
        fields = {f"x-amz-meta-{name}": value for name, value in (metadata or {}).items()}
        answer = await self._request(url, "PUT", headers=headers | fields, body=data)
        return answer.headers["ETag"]

    def _call(self, url: S3Url, method: str, **options: Unpack[_Options]) -> _Answer:
        return _LOOP.run(self._request(url, method, **options))

    async def _request(self, url: S3Url, method: str, **options: Unpack[_Options]) -> _Answer:
        """One S3 call, retried on a network failure, 5xx or throttling (botocore's
        "standard" mode: 5 attempts, capped exponential backoff with full jitter).

        ``body`` goes unsigned with a Content-MD5 (one pass, no copy); ``xml`` (small
        request documents) is signed with its SHA-256, as S3 wants for some calls.
        """
        extra = dict(options.get("headers", {}))
        xml, body = options.get("xml"), options.get("body")
        if xml is not None:
            data: bytes | bytearray = xml
            payload_hash = hashlib.sha256(xml).hexdigest()
            extra["Content-MD5"] = _md5(xml)
        elif body is not None:
            data, payload_hash = body, UNSIGNED_PAYLOAD
            extra["Content-MD5"] = _md5(body)
        else:
            data, payload_hash = b"", hashlib.sha256(b"").hexdigest()
        host, path = self._address(url)
        pairs = list(options.get("query", {}).items())
        target = f"{self._scheme}://{host}{path}" + (f"?{encode_query(pairs)}" if pairs else "")
        for attempt in range(1, _ATTEMPTS + 1):
            credentials = await self._credentials.current(str(url))
            signed = sign(
                method=method,
                host=host,
                path=path,
                query=pairs,
                headers=extra,
                payload_hash=payload_hash,
                credentials=credentials,
                region=self._region,
                now=datetime.now(UTC),
            )
            try:
                answer = await self._send(method, target, signed, data)
            except (aiohttp.ClientError, TimeoutError) as exc:
                if attempt == _ATTEMPTS:
                    raise StorageError(
                        f"object store unreachable: {type(exc).__name__}: {exc}",
                        url=str(url),
                        attempts=attempt,
                    ) from None
            else:
                failure = _failure(url, method, answer)
                if failure is None:
                    return answer
                error, retryable = failure
                if not retryable or attempt == _ATTEMPTS:
                    raise error
            await asyncio.sleep(random.uniform(0, min(_BACKOFF_CAP, _BACKOFF * 2**attempt)))
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _send(
        self, method: str, target: str, headers: dict[str, str], data: bytes | bytearray
    ) -> _Answer:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=_POOL),
                timeout=aiohttp.ClientTimeout(
                    sock_connect=_CONNECT_TIMEOUT, sock_read=_READ_TIMEOUT
                ),
                skip_auto_headers=("Content-Type",),
                auto_decompress=False,
            )
        payload: bytes | bytearray | AsyncIterator[memoryview] | None = data or None
        if len(data) >= _STREAM_FROM:
            # Handed over whole, aiohttp would slice a bytearray (a copy), join it to the
            # headers (a copy) and the socket's transport keep what the kernel did not take
            # (another): three parts in memory for one. Slices of a view, each written and
            # drained, cost nothing; the length is set so that the body is not chunked.
            headers = headers | {"Content-Length": str(len(data))}
            payload = _slices(data)
        async with self._session.request(
            method, URL(target, encoded=True), headers=headers, data=payload
        ) as response:
            return _Answer(response.status, response.headers, await response.read())

    def _address(self, url: S3Url) -> tuple[str, str]:
        """The Host and the encoded path of ``url``: virtual-hosted on AWS, path-style else."""
        key = quote(url.key, safe="/~")
        # A bucket with dots breaks the certificate of a virtual host: path style for it.
        if self._virtual and "." not in url.bucket:
            return f"{url.bucket}.{self._netloc}", f"/{key}"
        return self._netloc, f"/{quote(url.bucket, safe='')}" + (f"/{key}" if url.key else "")


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


async def _slices(data: bytes | bytearray) -> AsyncIterator[memoryview]:
    view = memoryview(data)
    for start in range(0, len(view), _SLICE):
        yield view[start : start + _SLICE]


def _md5(data: bytes | bytearray) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _parse_xml(body: bytes) -> ElementTree.Element | None:
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None
    for element in root.iter():
        element.tag = element.tag.rpartition("}")[2]
    return root


def _failure(url: S3Url, method: str, answer: _Answer) -> tuple[AnnopullError, bool] | None:
    """The error an answer carries and whether a retry may fix it, or ``None``.

    A status of 300 or more is an error; so is a 200 whose document is an ``<Error>``
    (CompleteMultipartUpload and CopyObject fail that way, after their headers went out).
    """
    if answer.status < 300:
        # A GET's body is the user's object, whatever it holds.
        if method == "GET" or not answer.body.lstrip().startswith(b"<"):
            return None
        document = _parse_xml(answer.body)
        if document is None or document.tag != "Error":
            return None
    else:
        document = _parse_xml(answer.body) if answer.body else None
    # HEAD answers, and some proxies, have no document: the status is the code.
    code = (document.findtext("Code") if document is not None else None) or str(answer.status)
    retryable = answer.status >= 500 or code in _THROTTLED or code == "InternalError"
    message = (document.findtext("Message") if document is not None else None) or ""
    return _error(url, answer.status, code, message), retryable


def _error(url: S3Url, status: int, code: str, message: str) -> AnnopullError:
    """An S3 error answer as annopull's one-line error naming ``url`` (no credentials: S3
    names codes and keys, never secrets, and redact() runs over every message)."""
    where = str(url)
    if code in _CONFIG_CODES:
        what = {"NoSuchBucket": "no such bucket", "AccessDenied": "access denied"}.get(code, code)
        if code == "403":
            what = "access denied"
        return ConfigError(f"{what}: {where}")
    if code in ("PreconditionFailed", "412") or status == 412:
        return PreconditionFailedError("the object already exists", url=where, status=412)
    detail = f"{code}: {message}" if message and message != code else code
    return StorageError(f"object store refused: {detail}", url=where, status=status)
