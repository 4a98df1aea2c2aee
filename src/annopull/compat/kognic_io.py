"""A drop-in for kognic-io 2.19's annotation reads, on annopull's engine.

Change the import line and nothing else::

    from kognic.io.client import KognicIOClient           # before
    from annopull.compat.kognic_io import KognicIOClient  # after

    client = KognicIOClient()
    for annotation in client.annotation.get_project_annotations("P", "T", batch="B"):
        ...  # contents fetched concurrently while this loop runs

The constructor takes kognic-io 2.19's parameters and finds credentials the same way; the
``client.annotation`` methods take the same parameters with the same defaults and return
objects with the same attribute names and types (:class:`Annotation`, :class:`InputAnnotation`).
A missing annotation raises :class:`NotFoundHTTPError`, which is a ``requests.HTTPError`` with
``response.status_code == 404`` (when requests is installed, as it is with kognic-io) and
annopull's :class:`~annopull.NotFoundError` with ``status == 404``; every other failure is
annopull's own error (:class:`~annopull.AnnopullError`).

What differs from kognic-io:

- ``get_project_annotations`` yields in the order the contents arrive, not in listing order.
- Only annotation reads exist: the other resources (``client.input``, ``client.project``, ...)
  are not there. The constructor parameters for their hosts and for uploads are accepted and
  ignored, and no workspace is looked up.
- ``client_organization_id`` is accepted and ignored (annotations are read as the user the
  credentials belong to).
- ``max_connections`` is how many contents are fetched at once (the engine's ``concurrency``;
  annopull's default when omitted), ``max_retry_attempts`` the retries per request,
  ``max_retry_wait_time`` the longest backoff and ``timeout`` the read timeout; left out, each
  keeps annopull's default (:class:`~annopull.EngineConfig`).

:class:`AsyncKognicIOClient` is the implementation: the same methods as coroutines and an async
generator, for async applications (``async with AsyncKognicIOClient() as client``).
:class:`KognicIOClient` runs one of those on an event loop in a thread of its own, started on
first use and stopped by :meth:`KognicIOClient.close` (or ``with``, garbage collection, the
interpreter's exit), and hands results to the calling thread through a bounded queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import queue
import threading
import warnings
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator, Mapping
from contextlib import AsyncExitStack, aclosing, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, Self, TypeVar, cast

import anyio
import orjson
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from annopull._client import Client
from annopull._config import Config, EngineConfig, KognicConfig, load_config
from annopull._config import load_kognic_credentials as _check_credentials
from annopull._errors import (
    AnnopullError,
    ApiError,
    ConfigError,
    InvalidResponseError,
    NotFoundError,
)
from annopull._pipeline.pull import parse_time
from annopull._sources.kognic import KognicSource
from annopull._sources.kognic_reads import SceneAnnotation

if TYPE_CHECKING:
    _HTTPErrorBase = Exception
else:
    try:
        # Callers of kognic-io catch requests' HTTPError: the 404 is one when requests is there.
        from requests import HTTPError as _HTTPErrorBase
    except ImportError:  # pragma: no cover - requests comes with most environments
        _HTTPErrorBase = Exception

__all__ = [
    "DEFAULT_ANNOTATION_INTEGRATION_API_HOST",
    "DEFAULT_AUTH_HOST",
    "DEFAULT_INPUT_API_HOST",
    "Annotation",
    "AnnotationResource",
    "AsyncAnnotationResource",
    "AsyncKognicIOClient",
    "HTTPResponse",
    "InputAnnotation",
    "KognicIOClient",
    "NotFoundHTTPError",
]

log = logging.getLogger("annopull.compat")

DEFAULT_INPUT_API_HOST = KognicConfig().api_url
DEFAULT_AUTH_HOST = KognicConfig().auth_url
DEFAULT_ANNOTATION_INTEGRATION_API_HOST = KognicConfig().annotation_integration_url
_DEFAULT_ORDER_EXECUTION_API_HOST = "https://order-execution.app.kognic.com"
_DEFAULT_WORKSPACE_API_HOST = "https://workspace.app.kognic.com"
_DEFAULT_PROJECT_MANAGEMENT_API_HOST = "https://project-management.app.kognic.com"

#: Contents from this size are parsed in a worker thread, not on the event loop.
_PARSE_INLINE = 256 * 1024
#: Items the loop thread may hand over ahead of the synchronous caller.
_HANDOFF = 8
#: Seconds to wait for the loop thread to start, and for work to stop when asked to.
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")
F = TypeVar("F", bound=Callable[..., Any])

#: What ``auth=`` takes: ``(client_id, client_secret)``, a credentials JSON file, or ``None``.
Auth = tuple[str, str] | str | os.PathLike[str] | None


# -- returned objects ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Annotation:
    """One annotation of the bulk and single reads, as kognic-io's ``client_annotation.Annotation``.

    ``content`` is the OpenLABEL document parsed (``{"openlabel": {...}}``), or ``None`` when
    ``include_content=False``.
    """

    scene_uuid: str
    annotation_type: str
    created: datetime
    content: dict[str, Any] | None = field(default=None, repr=False)
    is_preliminary: bool = False

    @property
    def input_uuid(self) -> str:
        """Deprecated in kognic-io in favour of :attr:`scene_uuid`, which it returns."""
        warnings.warn(
            "input_uuid is deprecated in favour of scene_uuid", DeprecationWarning, stacklevel=2
        )
        return self.scene_uuid


@dataclass(frozen=True, slots=True, kw_only=True)
class InputAnnotation:
    """One annotation of the per-input, per-scene and by-id reads (kognic-io's ``Annotation``)."""

    input_uuid: str
    scene_uuid: str
    request_uid: str
    created: datetime
    is_preliminary: bool
    content: dict[str, Any] | None = field(default=None, repr=False)


# -- errors ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HTTPResponse:
    """The part of a ``requests.Response`` that a caller of kognic-io looks at on an error."""

    status_code: int
    url: str
    reason: str


class NotFoundHTTPError(NotFoundError, _HTTPErrorBase):
    """A 404 as kognic-io raises it, and as annopull does.

    A ``requests.HTTPError`` (when requests is importable) whose ``response.status_code`` is
    404, and a :class:`~annopull.NotFoundError` with ``status``, ``url`` (without its
    signature) and ``item``.
    """

    #: requests' ``HTTPError.request``: there is none to show.
    request = None

    @property
    def response(self) -> HTTPResponse:
        """What requests' ``HTTPError.response`` shows: ``status_code``, ``url``, ``reason``."""
        return HTTPResponse(status_code=self.status or 404, url=self.url or "", reason=self.reason)


@contextmanager
def _as_http_errors() -> Generator[None, None, None]:
    """Raise annopull's NotFoundError as the :class:`NotFoundHTTPError` kognic-io callers catch."""
    try:
        yield
    except NotFoundHTTPError:
        raise
    except NotFoundError as exc:
        raise NotFoundHTTPError(
            exc.reason, url=exc.url, status=exc.status or 404, attempts=exc.attempts, item=exc.item
        ) from exc


def _renamed(old: str, new: str) -> Callable[[F], F]:
    """Accept keyword ``old`` for ``new`` with a DeprecationWarning, as kognic-io does."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            if old in kwargs:
                warnings.warn(
                    f'The parameter "{old}" has been deprecated in favor of "{new}"',
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return cast(F, call)

    return decorate


# -- conversions -----------------------------------------------------------------------------


def _created(text: str, *, item: str) -> datetime:
    try:
        return parse_time(text)
    except ConfigError:
        raise ApiError(f"created is not an ISO 8601 time: {text[:80]!r}", item=item) from None


async def _parse(content: bytes, *, item: str) -> dict[str, Any]:
    """The content as a dict; a big document is parsed off the event loop."""
    try:
        if len(content) < _PARSE_INLINE:
            document = orjson.loads(content)
        else:
            document = await anyio.to_thread.run_sync(orjson.loads, content)
    except orjson.JSONDecodeError as exc:
        raise InvalidResponseError(f"content is not JSON: {exc}", item=item) from None
    if not isinstance(document, dict):
        raise InvalidResponseError("content is not a JSON object", item=item)
    return document


async def _input_annotation(got: SceneAnnotation) -> InputAnnotation:
    return InputAnnotation(
        input_uuid=got.input_uuid,
        scene_uuid=got.scene_uuid,
        request_uid=got.request_uid,
        created=_created(got.created, item=got.input_uuid),
        is_preliminary=got.is_preliminary,
        content=await _parse(got.content, item=got.input_uuid),
    )


async def _translated(read: Awaitable[R]) -> R:
    """``await read``, with a 404 raised as :class:`NotFoundHTTPError`."""
    with _as_http_errors():
        return await read


# -- the clients -----------------------------------------------------------------------------


class _Options:
    """kognic-io 2.19's constructor, shared by both clients; see :class:`KognicIOClient`."""

    def __init__(
        self,
        *,
        auth: Auth = None,
        host: str = DEFAULT_INPUT_API_HOST,
        order_execution_api_host: str = _DEFAULT_ORDER_EXECUTION_API_HOST,
        annotation_integration_api_host: str = DEFAULT_ANNOTATION_INTEGRATION_API_HOST,
        workspace_api_host: str = _DEFAULT_WORKSPACE_API_HOST,
        project_management_api_host: str = _DEFAULT_PROJECT_MANAGEMENT_API_HOST,
        auth_host: str = DEFAULT_AUTH_HOST,
        client_organization_id: int | None = None,
        max_retry_attempts: int | None = None,
        max_retry_wait_time: float | None = None,
        timeout: float | None = None,
        max_connections: int | None = None,
        write_workspace_id: str | None = None,
        workspace_id: str | None = None,
        max_upload_retry_attempts: int | None = None,
        max_upload_retry_wait_time: float | None = None,
    ) -> None:
        engine: dict[str, Any] = {
            "max_attempts": None if max_retry_attempts is None else max_retry_attempts + 1,
            "backoff_max": max_retry_wait_time,
            "read_timeout": timeout,
            "connect_timeout": None
            if timeout is None
            else min(timeout, EngineConfig().connect_timeout),
            "concurrency": max_connections,
        }
        kognic = {
            "api_url": host,
            "auth_url": auth_host,
            "annotation_integration_url": annotation_integration_api_host,
        }
        # No ANNOPULL_* variables: only what the caller passed, checked as a config file is.
        self._config: Config = load_config(env={}, overrides={"kognic": kognic, "engine": engine})
        self._env = _credentials_env(auth)
        # Refused now, as kognic-io refuses them when it is made; the token is fetched later.
        _check_credentials(self._config.kognic, env=self._env)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(host={self._config.kognic.api_url!r})"

    @classmethod
    def _like(cls, other: _Options) -> Self:
        """A client of this class with ``other``'s settings (checked once already)."""
        made = cls.__new__(cls)
        made._config, made._env = other._config, other._env
        return made


def _credentials_env(auth: Auth) -> Mapping[str, str] | None:
    """``auth=`` as the environment that :func:`load_kognic_credentials` reads."""
    if auth is None:
        return None
    if isinstance(auth, tuple):
        if len(auth) != 2 or not all(isinstance(part, str) and part for part in auth):
            raise ConfigError("auth must be a (client_id, client_secret) pair of strings")
        return {"KOGNIC_CLIENT_ID": auth[0], "KOGNIC_CLIENT_SECRET": auth[1]}
    if isinstance(auth, str | os.PathLike):
        return {"KOGNIC_CREDENTIALS": os.fspath(auth)}
    raise ConfigError(
        f"auth must be (client_id, client_secret), a credentials file path or None, "
        f"not {type(auth).__name__}"
    )


@dataclass(frozen=True, slots=True)
class _Open:
    """What an entered :class:`AsyncKognicIOClient` holds."""

    kognic: KognicSource
    tasks: TaskGroup
    stack: AsyncExitStack


class AsyncKognicIOClient(_Options):
    """kognic-io's client for async code: use as ``async with AsyncKognicIOClient() as client``.

    ``client.annotation`` has the methods of :class:`KognicIOClient`'s as coroutines, and
    ``get_project_annotations`` as an async generator. Leaving the ``async with`` block stops
    every iteration still running. The constructor's parameters are :class:`KognicIOClient`'s.
    """

    _open: _Open | None = None

    async def __aenter__(self) -> Self:
        if self._open is not None:
            raise RuntimeError(f"{type(self).__name__} is already open")
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(Client(config=self._config, env=self._env))
            tasks = await stack.enter_async_context(anyio.create_task_group())
            # Runs before the task group is left: the iterations still running end now.
            stack.callback(tasks.cancel_scope.cancel)
            self._open = _Open(client.kognic, tasks, stack.pop_all())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop what is running and close the connections."""
        if self._open is not None:
            opened, self._open = self._open, None
            await opened.stack.aclose()

    @property
    def annotation(self) -> AsyncAnnotationResource:
        """The annotation reads."""
        return AsyncAnnotationResource(self)

    def _opened(self) -> _Open:
        if self._open is None:
            raise RuntimeError(
                f"{type(self).__name__} is not open: use `async with {type(self).__name__}()`"
            )
        return self._open


@dataclass(frozen=True, slots=True)
class _Outcome(Generic[T]):
    """One item of an iteration handed between tasks or threads: a value, an error, or the end."""

    value: T | None = None
    error: BaseException | None = None
    end: bool = False

    def get(self) -> T:
        if self.error is not None:
            raise self.error
        return cast(T, self.value)


_END: _Outcome[Any] = _Outcome(end=True)
_CLOSED = "the client was closed while iterating"


class AsyncAnnotationResource:
    """``client.annotation`` of :class:`AsyncKognicIOClient`."""

    def __init__(self, client: AsyncKognicIOClient) -> None:
        self._client = client

    async def get_project_annotations(
        self,
        project: str,
        annotation_type: str,
        batch: str | None = None,
        include_content: bool = True,
        iso_rotated_cuboids: bool = False,
    ) -> AsyncGenerator[Annotation, None]:
        """Yield the annotations of a project (or one batch), contents fetched concurrently.

        They come in the order their contents arrive. Memory is bounded: the engine holds at
        most about five times ``max_connections`` contents ahead of the loop (in flight and
        waiting), and the synchronous client 8 more; lower ``max_connections`` for documents
        of hundreds of MB. Leaving the loop early (or closing the generator) cancels what is
        in flight.

        Args:
            project: the project identifier.
            annotation_type: the annotation type.
            batch: only this batch.
            include_content: fetch each content; ``False`` lists only (``content`` None).
            iso_rotated_cuboids: cuboids in ISO 8855 (``useDefaultCartesian=true``).

        Raises:
            NotFoundHTTPError: the project, batch or annotation type does not exist.
            AnnopullError: a content could not be fetched, or the listing failed.
        """
        opened = self._client._opened()
        produce = functools.partial(
            _pull_project,
            opened.kognic,
            project,
            annotation_type,
            batch=batch,
            include_content=include_content,
            cartesian=iso_rotated_cuboids,
        )
        # Unbuffered: the engine already holds contents ahead (see the docstring).
        send, receive = anyio.create_memory_object_stream[_Outcome[Annotation]](0)
        # The fetches run in a task of the client's group, not in this generator: a
        # generator abandoned by its caller is closed by the garbage collector in another
        # task, where a task group of its own could not be left.
        scope: anyio.CancelScope = await opened.tasks.start(_deliver, produce, send)
        try:
            with receive:
                async for outcome in receive:
                    if outcome.end:
                        return
                    yield outcome.get()
            raise AnnopullError(_CLOSED)
        finally:
            scope.cancel()

    @_renamed("input_uuid", "scene_uuid")
    async def get_annotation(
        self, scene_uuid: str, annotation_type: str, iso_rotated_cuboids: bool = False
    ) -> Annotation:
        """One scene's annotation of one type, content included.

        Args:
            scene_uuid: the scene (``input_uuid=`` is accepted, deprecated, as in kognic-io).
            annotation_type: the annotation type.
            iso_rotated_cuboids: cuboids in ISO 8855.

        Raises:
            NotFoundHTTPError: the scene has no annotation of that type.
        """
        kognic = self._client._opened().kognic
        got = await _translated(
            kognic.get_annotation(scene_uuid, annotation_type, cartesian=iso_rotated_cuboids)
        )
        return Annotation(
            scene_uuid=got.scene_uuid,
            annotation_type=got.annotation_type,
            created=_created(got.created, item=got.scene_uuid),
            content=await _parse(got.content, item=got.scene_uuid),
        )

    async def get_annotation_by_id(
        self, annotation_id: str, *, iso_rotated_cuboids: bool = False
    ) -> InputAnnotation:
        """One annotation by its id, from the annotation-integration API, content included.

        Args:
            annotation_id: a delivered annotation's id, or a preliminary judgement's
                (``is_preliminary`` True).
            iso_rotated_cuboids: cuboids in ISO 8855 (``isoBoxes=true``).

        Raises:
            NotFoundHTTPError: no annotation has that id, or it was invalidated.
        """
        kognic = self._client._opened().kognic
        got = await _translated(
            kognic.get_annotation_by_id(annotation_id, iso_boxes=iso_rotated_cuboids)
        )
        return await _input_annotation(got)

    async def get_annotation_for_input(
        self, input_uuid: str, iso_rotated_cuboids: bool = False
    ) -> InputAnnotation:
        """The annotation of one input, content included.

        Args:
            input_uuid: the input.
            iso_rotated_cuboids: cuboids in ISO 8855.

        Raises:
            NotFoundHTTPError: the input has no annotation.
        """
        kognic = self._client._opened().kognic
        got = await _translated(
            kognic.get_annotation_for_input(input_uuid, cartesian=iso_rotated_cuboids)
        )
        return await _input_annotation(got)

    async def get_annotations_for_scene(
        self, scene_uuid: str, iso_rotated_cuboids: bool = False
    ) -> list[InputAnnotation]:
        """Every annotation of one scene, contents included (fetched concurrently).

        Args:
            scene_uuid: the scene.
            iso_rotated_cuboids: cuboids in ISO 8855.

        Raises:
            NotFoundHTTPError: the scene does not exist.
        """
        kognic = self._client._opened().kognic
        found = await _translated(
            kognic.get_annotations_for_scene(scene_uuid, cartesian=iso_rotated_cuboids)
        )
        return [await _input_annotation(got) for got in found]


#: What a producer hands each item to (the sending end of an iteration).
Emit = Callable[[T], Awaitable[None]]


async def _pull_project(
    kognic: KognicSource,
    project: str,
    annotation_type: str,
    emit: Emit[Annotation],
    *,
    batch: str | None,
    include_content: bool,
    cartesian: bool,
) -> None:
    """Hand every annotation of the project to ``emit``.

    A coroutine with a callback rather than an async generator: ``project_annotations``
    holds a task group, and a generator suspended inside one would take the group's
    cancellation (a failed fetch) at its caller's ``await``, outside the group.
    """
    with _as_http_errors():
        if not include_content:
            listing = kognic.list_annotations(
                project, annotation_type, batch=batch, cartesian=cartesian
            )
            async with aclosing(listing):
                async for ref in listing:
                    if ref.problem is not None:
                        raise ApiError(ref.problem, item=ref.scene_uuid)
                    await emit(
                        Annotation(
                            scene_uuid=ref.scene_uuid,
                            annotation_type=ref.annotation_type,
                            created=_created(ref.created, item=ref.scene_uuid),
                        )
                    )
            return
        pulling = kognic.project_annotations(
            project, annotation_type, batch=batch, cartesian=cartesian
        )
        async with pulling as pulled:
            async for got in pulled:
                content = await _parse(got.content, item=got.scene_uuid)
                await emit(
                    Annotation(
                        scene_uuid=got.scene_uuid,
                        annotation_type=got.annotation_type,
                        created=_created(got.created, item=got.scene_uuid),
                        content=content,
                    )
                )


async def _deliver(
    produce: Callable[[Emit[T]], Awaitable[None]],
    send: MemoryObjectSendStream[_Outcome[T]],
    *,
    task_status: TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Send what ``produce`` emits, then its end or its error, until the reader goes away.

    Errors go to the reader, never into the client's task group (which would stop every
    other iteration of the client).
    """

    async def emit(item: T) -> None:
        await send.send(_Outcome(item))

    with anyio.CancelScope() as scope:
        task_status.started(scope)
        async with send:
            try:
                await produce(emit)
                await send.send(_END)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return  # the reader left
            except BaseException as exc:
                if scope.cancel_called or isinstance(exc, anyio.get_cancelled_exc_class()):
                    raise  # stopped: by the reader, or by the client closing
                with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await send.send(_Outcome(error=exc))


# -- the synchronous client -------------------------------------------------------------------


class _LoopThread:
    """An event loop on a daemon thread of its own, with one entered AsyncKognicIOClient.

    Started on first use; :meth:`stop` leaves the client (cancelling what runs) and ends the
    thread, waiting at most ``_STOP_TIMEOUT`` seconds.
    """

    def __init__(self, client: AsyncKognicIOClient) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._started: tuple[asyncio.AbstractEventLoop, asyncio.Event, threading.Thread] | None
        self._started = None
        self._stopped = False

    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, started now if it is not yet.

        Raises:
            AnnopullError: the client is closed.
            ConfigError, AnnopullError: the client could not be opened.
        """
        with self._lock:
            if self._stopped:
                raise AnnopullError("the KognicIOClient is closed")
            if self._started is None:
                self._started = self._start()
            return self._started[0]

    def _start(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Event, threading.Thread]:
        ready: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, asyncio.Event]]
        ready = concurrent.futures.Future()
        thread = threading.Thread(
            target=asyncio.run, args=(self._host(ready),), name="annopull-kognic-io", daemon=True
        )
        thread.start()
        try:
            loop, stop = ready.result(timeout=_START_TIMEOUT)
        except BaseException:
            thread.join(_STOP_TIMEOUT)
            raise
        return loop, stop, thread

    async def _host(
        self, ready: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, asyncio.Event]]
    ) -> None:
        """The thread's main task: the client is entered and left here, in one task."""
        stop = asyncio.Event()
        try:
            async with self.client:
                ready.set_result((asyncio.get_running_loop(), stop))
                await stop.wait()
        except BaseException as exc:
            if ready.done():
                raise
            ready.set_exception(exc)

    def alive(self) -> bool:
        return self._started is not None and self._started[2].is_alive()

    def stop(self) -> None:
        """Leave the client and end the thread; safe to call more than once, from any thread."""
        with self._lock:
            self._stopped = True
            started, self._started = self._started, None
        if started is None:
            return
        loop, stop, thread = started
        with suppress(RuntimeError):  # the loop has already ended
            loop.call_soon_threadsafe(stop.set)
        if threading.current_thread() is not thread:
            thread.join(_STOP_TIMEOUT)
            if thread.is_alive():
                log.warning(
                    "the KognicIOClient's loop thread did not stop within %s s", _STOP_TIMEOUT
                )

    def call(self, work: Callable[[], Coroutine[Any, Any, R]]) -> R:
        """Run ``work()`` on the loop and return its result here."""
        loop = self.loop()  # first: a closed client must not leave `work()` unawaited
        future = asyncio.run_coroutine_threadsafe(work(), loop)
        try:
            return future.result()
        finally:
            # Interrupted (Ctrl-C) while waiting: the work must not go on without a caller.
            future.cancel()

    def iterate(self, items: Callable[[], AsyncGenerator[T, None]]) -> Generator[T, None, None]:
        """Iterate ``items()`` on the loop, here; at most ``_HANDOFF`` items wait in between."""
        loop = self.loop()
        handoff: queue.SimpleQueue[_Outcome[T]] = queue.SimpleQueue()
        space = asyncio.Semaphore(_HANDOFF)
        finished = threading.Event()

        async def pump() -> None:
            try:
                async with aclosing(items()) as iterator:
                    async for item in iterator:
                        await space.acquire()
                        handoff.put(_Outcome(item))
                handoff.put(_END)
            except BaseException as exc:
                handoff.put(_Outcome(error=exc))
                raise
            finally:
                finished.set()

        future = asyncio.run_coroutine_threadsafe(pump(), loop)
        try:
            while not (outcome := self._take(handoff)).end:
                with suppress(RuntimeError):  # the loop has ended: the next take says so
                    loop.call_soon_threadsafe(space.release)
                if isinstance(outcome.error, asyncio.CancelledError):
                    raise AnnopullError(_CLOSED)
                yield outcome.get()
        finally:
            if not future.done():
                future.cancel()
                # The fetches end before the caller goes on (or at most this long after).
                finished.wait(_STOP_TIMEOUT)

    def _take(self, handoff: queue.SimpleQueue[_Outcome[T]]) -> _Outcome[T]:
        while True:
            try:
                return handoff.get(timeout=0.5)
            except queue.Empty:
                if not self.alive():
                    raise AnnopullError(_CLOSED) from None


def _blocking(
    method: Callable[Concatenate[AsyncAnnotationResource, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[AnnotationResource, P], R]:
    """The synchronous twin of an :class:`AsyncAnnotationResource` coroutine method."""

    @functools.wraps(method)
    def call(self: AnnotationResource, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._runner.call(lambda: method(self._async, *args, **kwargs))

    return call


def _iterating(
    method: Callable[Concatenate[AsyncAnnotationResource, P], AsyncGenerator[T, None]],
) -> Callable[Concatenate[AnnotationResource, P], Generator[T, None, None]]:
    """The synchronous twin of an :class:`AsyncAnnotationResource` async generator method."""

    @functools.wraps(method)
    def iterate(
        self: AnnotationResource, /, *args: P.args, **kwargs: P.kwargs
    ) -> Generator[T, None, None]:
        return self._runner.iterate(lambda: method(self._async, *args, **kwargs))

    return iterate


class AnnotationResource:
    """``client.annotation`` of :class:`KognicIOClient`: the async methods, blocking."""

    def __init__(self, client: KognicIOClient) -> None:
        # Held so that `KognicIOClient().annotation.get_...(...)` keeps its client (and the
        # loop thread) alive while it runs or iterates.
        self._client = client
        self._runner = client._runner
        self._async = client._runner.client.annotation

    get_project_annotations = _iterating(AsyncAnnotationResource.get_project_annotations)
    get_annotation = _blocking(AsyncAnnotationResource.get_annotation)
    get_annotation_by_id = _blocking(AsyncAnnotationResource.get_annotation_by_id)
    get_annotation_for_input = _blocking(AsyncAnnotationResource.get_annotation_for_input)
    get_annotations_for_scene = _blocking(AsyncAnnotationResource.get_annotations_for_scene)


class KognicIOClient(_Options):
    """kognic-io's ``KognicIOClient`` for annotation reads; the same constructor parameters.

    Synchronous, for existing scripts: the engine runs on an event loop in a thread of its
    own, started on first use. :meth:`close` (or ``with KognicIOClient() as client:``) stops
    it; so do garbage collection and the interpreter's exit, for scripts that never close.
    Safe to use from several threads.

    Args:
        auth: ``(client_id, client_secret)``, the path of a credentials JSON file, or ``None``
            for ``KOGNIC_CREDENTIALS``, then ``KOGNIC_CLIENT_ID`` and ``KOGNIC_CLIENT_SECRET``.
        host: the input API (where annotations are listed).
        order_execution_api_host: accepted and ignored (no annotation read uses it).
        annotation_integration_api_host: the annotation-integration API (reads by id).
        workspace_api_host: accepted and ignored (no workspace is looked up).
        project_management_api_host: accepted and ignored.
        auth_host: the OAuth server.
        client_organization_id: accepted and ignored.
        max_retry_attempts: retries of one request; annopull's ``max_attempts`` minus one
            when omitted.
        max_retry_wait_time: the longest backoff between retries, in seconds.
        timeout: seconds without a byte before a read is abandoned.
        max_connections: contents fetched at once (annopull's ``concurrency``).
        write_workspace_id: accepted and ignored (for writes, which this client has not).
        workspace_id: the same, under its older name.
        max_upload_retry_attempts: accepted and ignored (uploads).
        max_upload_retry_wait_time: accepted and ignored (uploads).

    Raises:
        ConfigError: no usable credentials, a bad ``auth``, or a setting out of range.
    """

    @functools.cached_property
    def _runner(self) -> _LoopThread:
        runner = _LoopThread(AsyncKognicIOClient._like(self))
        # Not a method of self: the finalizer must not keep the client alive.
        self._finalizer = weakref.finalize(self, runner.stop)
        return runner

    @functools.cached_property
    def annotation(self) -> AnnotationResource:
        """The annotation reads."""
        return AnnotationResource(self)

    def close(self) -> None:
        """Stop the loop thread and close the connections (waits a few seconds at most)."""
        self._runner.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
