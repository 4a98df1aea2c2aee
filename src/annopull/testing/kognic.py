"""A fake Kognic: OAuth token endpoint, annotation APIs and signed storage.

Four loopback servers on their own ports (auth, the input API, the annotation-integration
API, storage), answering as ``API-CONTRACT.md`` says. Scenes are never materialized: a
scene's uuid, ``created`` and OpenLABEL content are computed from
``(seed, project, index, version)`` on request; so are the input uuid, request uid and
annotation id of each scene's annotation of each type, which encode the scene index and
type so that the server resolves them without a table. The bulky part of the content
comes from a small cache of payload bodies into which a scene-specific header is spliced,
so serving stays cheap even for hundreds of thousands of scenes.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import random
import secrets
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final
from urllib.parse import quote

from aiohttp import web

from annopull.testing.chaos import Chaos, ChaosEvent, ChaosState, malformed_page
from annopull.testing.faults import (
    FakeServer,
    FaultPlan,
    UrlSigner,
    json_error,
    reject_auth_header,
    send_body,
    send_json,
)

__all__ = [
    "ExpectedAnnotation",
    "ExpectedSceneAnnotation",
    "FakeKognic",
    "KognicProject",
    "KognicStats",
]

_EPOCH: Final = datetime(2024, 1, 1, tzinfo=UTC)
#: Seconds a version bump moves ``created`` on: later than any first version.
_VERSION_STEP: Final = 10**8
#: Memory the cached payload bodies of one content size may take.
_PAYLOAD_CACHE_BYTES: Final = 64 << 20
#: Content size from which documents are rendered in a worker thread.
_LARGE_CONTENT: Final = 1 << 20
_OBJECT_CLASSES: Final = ("car", "pedestrian", "cyclist", "truck", "traffic_sign")


@dataclass(frozen=True, kw_only=True)
class KognicProject:
    """One project of the fake Kognic.

    Scene ``i`` belongs to batch ``batches[i % len(batches)]`` and has one
    annotation of every type in ``annotation_types``.

    Args:
        project: Project identifier used in URLs.
        batches: Batch identifiers.
        annotation_types: Annotation type names.
        count: Number of scenes.
        content_size: Approximate size in bytes of each OpenLABEL document.
        seed: Seeds scene uuids and content.
        page_size: Items per search page.
        invalid_scenes: Indices of scenes whose documents are not valid OpenLABEL (their
            ``schema_version`` is not one), for tests of validation.
    """

    project: str = "demo"
    batches: tuple[str, ...] = ("demo",)
    annotation_types: tuple[str, ...] = ("demo",)
    count: int = 5000
    content_size: int = 4096
    seed: int = 0
    page_size: int = 100
    invalid_scenes: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if not self.batches or not self.annotation_types:
            raise ValueError("a project needs at least one batch and one annotation type")
        # The scene index is stored in the uuid's low 32 bits (see _scene_uuid).
        if not 0 <= self.count < 2**32:
            raise ValueError(f"count must be in [0, 2**32), not {self.count}")
        if self.page_size < 1 or self.content_size < 0:
            raise ValueError("page_size must be positive and content_size not negative")


@dataclass(frozen=True)
class ExpectedAnnotation:
    """An annotation exactly as the fake serves it."""

    scene_uuid: str
    annotation_type: str
    created: str
    content: bytes


@dataclass(frozen=True)
class ExpectedSceneAnnotation:
    """An annotation exactly as the fake's v2 and by-id reads describe it."""

    input_uuid: str
    scene_uuid: str
    request_uid: str
    annotation_id: str
    annotation_type: str
    created: str
    content: bytes


@dataclass
class KognicStats:
    """What the fake Kognic was asked; tests assert on it."""

    token_requests: int = 0
    search_requests: int = 0
    #: Search requests that asked for ISO 8855 cuboids (``useDefaultCartesian=true``).
    cartesian_searches: int = 0
    #: Storage requests per scene uuid.
    content_requests: Counter[str] = field(default_factory=Counter)
    #: v1 single-annotation reads (content inline) per scene uuid.
    single_requests: Counter[str] = field(default_factory=Counter)
    #: v2 input and scene reads, and annotation-integration reads by id.
    annotation_requests: int = 0
    #: Single, v2 and by-id reads that asked for ISO 8855 cuboids (``useDefaultCartesian``
    #: or, by id, ``isoBoxes``).
    cartesian_reads: int = 0
    #: Body bytes storage actually sent.
    content_bytes: int = 0
    #: Storage requests that carried an Authorization header (0 for a correct client).
    storage_requests_with_auth_header: int = 0
    #: 401 answers sent (bad credentials, missing/unknown/expired tokens).
    unauthorized: int = 0
    #: Every access token issued, in order (to check that none leaks).
    issued_tokens: list[str] = field(default_factory=list)
    #: What :class:`~annopull.testing.Chaos` did, in order.
    chaos: list[ChaosEvent] = field(default_factory=list)


def _index_mask(seed: int, project: str) -> int:
    digest = hashlib.blake2b(f"{seed}:{project}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


def _scene_uuid(seed: int, project: str, index: int) -> str:
    """Deterministic scene uuid whose low 32 bits are the scene index, masked.

    Keeping the index recoverable lets the server resolve a uuid without a table;
    the mask keeps uuids from looking sequential.
    """
    digest = hashlib.blake2b(f"{seed}:{project}:{index}".encode(), digest_size=12).digest()
    low = (index ^ _index_mask(seed, project)).to_bytes(4, "big")
    return str(uuid.UUID(bytes=digest + low, version=4))


def _scene_index(seed: int, project: str, scene_uuid: str) -> int | None:
    try:
        low = uuid.UUID(scene_uuid).int & 0xFFFFFFFF
    except ValueError:
        return None
    return low ^ _index_mask(seed, project)


def _mask16(seed: int, project: str, kind: str) -> int:
    digest = hashlib.blake2b(f"{seed}:{project}:{kind}".encode(), digest_size=2).digest()
    return int.from_bytes(digest, "big")


def _annotation_uuid(seed: int, project: str, kind: str, type_index: int, index: int) -> str:
    """Deterministic uuid of one scene's annotation of one type (``kind``: input, id, request).

    The low 48 bits are the type index (16) and the scene index (32), masked, like
    :func:`_scene_uuid`'s.
    """
    text = f"{seed}:{project}:{kind}:{type_index}:{index}"
    digest = hashlib.blake2b(text.encode(), digest_size=10).digest()
    low = (type_index ^ _mask16(seed, project, kind)).to_bytes(2, "big") + (
        index ^ _index_mask(seed, project)
    ).to_bytes(4, "big")
    return str(uuid.UUID(bytes=digest + low, version=4))


def _annotation_place(seed: int, project: str, kind: str, text: str) -> tuple[int, int] | None:
    """``(type index, scene index)`` of an :func:`_annotation_uuid`, unchecked."""
    try:
        low = uuid.UUID(text).int & 0xFFFF_FFFF_FFFF
    except ValueError:
        return None
    return (low >> 32) ^ _mask16(seed, project, kind), (low & 0xFFFFFFFF) ^ _index_mask(
        seed, project
    )


def _created(index: int, version: int) -> str:
    moment = _EPOCH + timedelta(seconds=index + version * _VERSION_STEP)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _payload_slots(size: int) -> int:
    return max(1, min(32, _PAYLOAD_CACHE_BYTES // max(size, 1)))


@functools.lru_cache(maxsize=64)
def _payload(seed: int, size: int, slot: int) -> bytes:
    """The bulky ``"objects": ..., "frames": ...`` part of a document, about ``size`` bytes."""
    rng = random.Random(f"{seed}:{size}:{slot}")
    objects: list[str] = []
    frame_objects: list[str] = []
    total = 0
    while total < size or not objects:
        object_uuid = uuid.UUID(int=rng.getrandbits(128), version=4)
        kind = rng.choice(_OBJECT_CLASSES)
        values = json.dumps([round(rng.uniform(-50.0, 50.0), 3) for _ in range(10)])
        objects.append(f'"{object_uuid}": {{"name": "{kind}-{len(objects)}", "type": "{kind}"}}')
        frame_objects.append(
            f'"{object_uuid}": {{"object_data": {{"cuboid": '
            f'[{{"name": "cuboid-3d", "val": {values}}}]}}}}'
        )
        total += len(objects[-1]) + len(frame_objects[-1]) + 4
    return (
        '"objects": {'
        + ", ".join(objects)
        + '}, "frames": {"0": {"objects": {'
        + ", ".join(frame_objects)
        + '}, "frame_properties": {"timestamp": 0.0}}}'
    ).encode()


def _openlabel(
    project: KognicProject, scene_uuid: str, annotation_type: str, version: int
) -> bytes:
    """The OpenLABEL document of one annotation version: a header spliced onto a payload."""
    invalid = _scene_index(project.seed, project.project, scene_uuid) in project.invalid_scenes
    metadata = json.dumps(
        {
            "schema_version": "not-a-version" if invalid else "1.0.0",
            "name": scene_uuid,
            "project": project.project,
            "annotation_type": annotation_type,
            "version": version,
        }
    ).encode()
    slot = zlib.crc32(f"{scene_uuid}:{annotation_type}:{version}".encode())
    payload_size = max(0, project.content_size - len(metadata) - 40)
    payload = _payload(project.seed, payload_size, slot % _payload_slots(payload_size))
    return b'{"openlabel": {"metadata": ' + metadata + b", " + payload + b"}}"


async def _render(
    project: KognicProject, scene_uuid: str, annotation_type: str, version: int
) -> bytes:
    """:func:`_openlabel` without blocking the event loop on a large first render.

    Small documents are spliced inline: a thread hop would cost more than the work.
    """
    if project.content_size < _LARGE_CONTENT:
        return _openlabel(project, scene_uuid, annotation_type, version)
    return await asyncio.to_thread(_openlabel, project, scene_uuid, annotation_type, version)


class FakeKognic(FakeServer):
    """The fake Kognic platform; use as ``async with FakeKognic() as kognic: ...``.

    Args:
        projects: The projects it serves.
        client_id: The OAuth client id it accepts.
        client_secret: The OAuth client secret it accepts.
        token_ttl: Lifetime of access tokens, seconds.
        url_ttl: Lifetime of signed storage URLs, seconds (one-second resolution).
        latency: Seconds every storage answer waits before it starts, like the round trip
            to a real cloud store; benchmarks use it to measure what concurrency buys.
        host: Loopback address to listen on.
        chaos: Seeded misbehaviour of a fraction of all requests (see :class:`Chaos`);
            none if None. Scripted :attr:`faults` take precedence over it.
    """

    def __init__(
        self,
        *,
        projects: Sequence[KognicProject] = (KognicProject(),),
        client_id: str = "fake-client-id",
        client_secret: str = "fake-client-secret",
        token_ttl: float = 3600.0,
        url_ttl: float = 3600.0,
        latency: float = 0.0,
        host: str = "127.0.0.1",
        chaos: Chaos | None = None,
    ) -> None:
        super().__init__(host=host)
        self.latency = latency
        self.chaos = chaos
        #: The projects served, in the order given.
        self.projects = tuple(projects)
        self._projects = {project.project: project for project in projects}
        if len(self._projects) != len(projects):
            raise ValueError("project names must be unique")
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = token_ttl
        self.faults = FaultPlan()
        self.stats = KognicStats()
        self._chaos = ChaosState(chaos, self.stats.chaos)
        self._signer = UrlSigner(ttl=url_ttl)
        self._tokens: dict[str, float] = {}
        self._versions: dict[tuple[str, str], int] = {}

    # -- public helpers for tests -------------------------------------------------

    @property
    def api_url(self) -> str:
        """Base URL of the annotation API."""
        return self._url("api")

    @property
    def auth_url(self) -> str:
        """Base URL of the OAuth server."""
        return self._url("auth")

    @property
    def storage_url(self) -> str:
        """Base URL of the signed-URL storage."""
        return self._url("storage")

    @property
    def annotation_integration_url(self) -> str:
        """Base URL of the annotation-integration API (annotations by id)."""
        return self._url("integration")

    def scene_annotation(
        self, project: str, scene_uuid: str, annotation_type: str
    ) -> ExpectedSceneAnnotation:
        """One scene's annotation of one type as the v2 and by-id reads describe it."""
        spec = self._project(project)
        self._check_type(spec, annotation_type)
        index = self._find_index(spec, scene_uuid)
        if index is None:
            raise KeyError(f"no scene {scene_uuid} in project {project!r}")
        type_index = spec.annotation_types.index(annotation_type)
        version = self._versions.get((project, scene_uuid), 0)
        return ExpectedSceneAnnotation(
            input_uuid=_annotation_uuid(spec.seed, project, "input", type_index, index),
            scene_uuid=scene_uuid,
            request_uid=self._request_uid(spec, type_index, index),
            annotation_id=_annotation_uuid(spec.seed, project, "id", type_index, index),
            annotation_type=annotation_type,
            created=_created(index, version),
            content=_openlabel(spec, scene_uuid, annotation_type, version),
        )

    def annotation_id(self, project: str, scene_uuid: str, annotation_type: str) -> str:
        """The id of one scene's annotation of one type (for the annotation-integration API)."""
        return self.scene_annotation(project, scene_uuid, annotation_type).annotation_id

    def input_uuid(self, project: str, scene_uuid: str, annotation_type: str) -> str:
        """The input uuid of one scene's annotation of one type (for the v2 input read)."""
        return self.scene_annotation(project, scene_uuid, annotation_type).input_uuid

    def credentials_file_content(self) -> dict[str, str]:
        """The JSON object of a ``KOGNIC_CREDENTIALS`` file for this fake.

        ``issuer`` is the fake's auth URL (the real one names the auth host).
        """
        return {
            "clientId": self.client_id,
            "clientSecret": self.client_secret,
            "email": "fake-user@annopull.invalid",
            "userId": "1",
            "issuer": self.auth_url,
        }

    def expected(
        self, project: str, annotation_type: str, batch: str | None = None
    ) -> Iterator[ExpectedAnnotation]:
        """Yield every annotation the search lists, in listing order, with its content."""
        spec = self._project(project)
        self._check_type(spec, annotation_type)
        for index in self._indices(spec, batch):
            scene = _scene_uuid(spec.seed, spec.project, index)
            version = self._versions.get((spec.project, scene), 0)
            yield ExpectedAnnotation(
                scene_uuid=scene,
                annotation_type=annotation_type,
                created=_created(index, version),
                content=_openlabel(spec, scene, annotation_type, version),
            )

    def content(self, project: str, scene_uuid: str, annotation_type: str) -> bytes:
        """The current content of one annotation."""
        spec = self._project(project)
        self._check_type(spec, annotation_type)
        if self._find_index(spec, scene_uuid) is None:
            raise KeyError(f"no scene {scene_uuid} in project {project!r}")
        version = self._versions.get((project, scene_uuid), 0)
        return _openlabel(spec, scene_uuid, annotation_type, version)

    def update_scenes(self, project: str, scene_uuids: Iterable[str]) -> None:
        """Give these scenes a new version: a later ``created`` and different content."""
        spec = self._project(project)
        for scene in scene_uuids:
            if self._find_index(spec, scene) is None:
                raise KeyError(f"no scene {scene} in project {project!r}")
            key = (project, scene)
            self._versions[key] = self._versions.get(key, 0) + 1

    def expire_tokens(self) -> None:
        """Make every token issued so far answer 401."""
        self._tokens.clear()

    # -- model ----------------------------------------------------------------------

    def _project(self, name: str) -> KognicProject:
        try:
            return self._projects[name]
        except KeyError:
            raise KeyError(f"no project {name!r}") from None

    @staticmethod
    def _check_type(spec: KognicProject, annotation_type: str) -> None:
        if annotation_type not in spec.annotation_types:
            raise KeyError(f"no annotation type {annotation_type!r} in {spec.project!r}")

    @staticmethod
    def _indices(spec: KognicProject, batch: str | None) -> range:
        if batch is None:
            return range(spec.count)
        if batch not in spec.batches:
            raise KeyError(f"no batch {batch!r} in {spec.project!r}")
        return range(spec.batches.index(batch), spec.count, len(spec.batches))

    @staticmethod
    def _find_index(spec: KognicProject, scene_uuid: str) -> int | None:
        index = _scene_index(spec.seed, spec.project, scene_uuid)
        if index is None or index >= spec.count:
            return None
        return index if _scene_uuid(spec.seed, spec.project, index) == scene_uuid else None

    def _locate(self, scene_uuid: str) -> tuple[KognicProject, int] | None:
        for spec in self._projects.values():
            index = self._find_index(spec, scene_uuid)
            if index is not None:
                return spec, index
        return None

    def _locate_annotation(self, kind: str, text: str) -> tuple[KognicProject, int, int] | None:
        """The project, type index and scene index an input uuid or annotation id names."""
        for spec in self._projects.values():
            place = _annotation_place(spec.seed, spec.project, kind, text)
            if place is None:
                return None
            type_index, index = place
            if (
                type_index < len(spec.annotation_types)
                and index < spec.count
                and _annotation_uuid(spec.seed, spec.project, kind, type_index, index) == text
            ):
                return spec, type_index, index
        return None

    @staticmethod
    def _request_uid(spec: KognicProject, type_index: int, index: int) -> str:
        """The request that annotated a scene's batch with one type: one per batch and type."""
        batch = index % len(spec.batches)
        return _annotation_uuid(spec.seed, spec.project, "request", type_index, batch)

    # -- servers --------------------------------------------------------------------

    async def _serve(self) -> None:
        self._chaos.reset()
        await self._listen("auth", [web.post("/v1/auth/oauth/token", self._token)])
        prefix = "/v1/annotations"
        await self._listen(
            "api",
            [
                web.get(
                    prefix + "/projects/{project}/annotation-type/{atype}/search", self._search
                ),
                web.get(
                    prefix + "/projects/{project}/batch/{batch}/annotation-type/{atype}/search",
                    self._search,
                ),
                web.get(prefix + "/inputs/{scene}/annotation-type/{atype}", self._single),
                web.get("/v2/inputs/{input}/annotation", self._v2_input),
                web.get("/v2/scenes/{scene}/annotations", self._v2_scene),
            ],
        )
        await self._listen("integration", [web.get(prefix + "/{id}", self._by_id)])
        await self._listen(
            "storage", [web.get("/o/{project}/{atype}/{scene}/{version}", self._storage)]
        )

    async def close(self) -> None:
        """Stop the servers."""
        await super().close()
        self._urls.clear()

    def _unauthorized(self, message: str) -> web.Response:
        self.stats.unauthorized += 1
        return json_error(401, message)

    def _check_bearer(self, request: web.Request) -> web.Response | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return self._unauthorized("missing bearer token")
        expiry = self._tokens.get(token)
        if expiry is None or time.monotonic() >= expiry:
            return self._unauthorized("token is unknown or expired")
        return None

    async def _token(self, request: web.Request) -> web.StreamResponse:
        self.stats.token_requests += 1
        form = await request.post()
        client_id = str(form.get("client_id", ""))
        fault, answer, chaos = await self._admit(
            request, target="token", key=client_id, server="auth"
        )
        if answer is not None:
            return answer
        if form.get("grant_type") != "client_credentials":
            return json_error(400, "grant_type must be client_credentials")
        secret = str(form.get("client_secret", ""))
        if not (
            secrets.compare_digest(client_id, self.client_id)
            and secrets.compare_digest(secret, self.client_secret)
        ):
            return self._unauthorized("invalid client credentials")
        token = secrets.token_urlsafe(24)
        self._tokens[token] = time.monotonic() + self.token_ttl
        self.stats.issued_tokens.append(token)
        ttl = int(self.token_ttl) if self.token_ttl.is_integer() else self.token_ttl
        body = {"access_token": token, "token_type": "Bearer", "expires_in": ttl}
        return await send_json(request, body, fault=fault, chaos=chaos)

    async def _search(self, request: web.Request) -> web.StreamResponse:
        self.stats.search_requests += 1
        self.stats.cartesian_searches += request.query.get("useDefaultCartesian") == "true"
        info = request.match_info
        cursor = request.query.get("cursorId", "0")
        page = f"{info['project']}/{info.get('batch', '')}/{info['atype']}?{cursor}"
        fault, answer, chaos = await self._admit(
            request, target="search", key=info["project"], server="api", chaos_key=page
        )
        if answer is not None:
            return answer
        if (denied := self._check_bearer(request)) is not None:
            return denied
        try:
            spec = self._project(info["project"])
            self._check_type(spec, info["atype"])
            indices = self._indices(spec, info.get("batch"))
        except KeyError as exc:
            return json_error(404, str(exc.args[0]))
        if not cursor.isdigit():
            return json_error(400, f"invalid cursorId {cursor!r}")
        offset = int(cursor)
        end = offset + spec.page_size
        items = [self._item(spec, index, info["atype"]) for index in indices[offset:end]]
        next_cursor = str(end) if end < len(indices) else None
        body = {"data": items, "metadata": {"nextCursorId": next_cursor}}
        if chaos is not None and chaos.malformed is not None:
            chaos.note(f"malformed {chaos.malformed}")
            return await send_json(request, malformed_page(body, chaos), fault=fault, chaos=chaos)
        return await send_json(request, body, fault=fault, chaos=chaos)

    def _item(self, spec: KognicProject, index: int, annotation_type: str) -> dict[str, str]:
        scene = _scene_uuid(spec.seed, spec.project, index)
        version = self._versions.get((spec.project, scene), 0)
        path = "/o/" + "/".join(
            quote(part, safe="") for part in (spec.project, annotation_type, scene, f"v{version}")
        )
        return {
            "inputUuid": scene,
            "annotationType": annotation_type,
            "created": _created(index, version),
            "uri": self._signer.sign(self.storage_url, path),
        }

    async def _single(self, request: web.Request) -> web.StreamResponse:
        scene, annotation_type = request.match_info["scene"], request.match_info["atype"]
        self.stats.single_requests[scene] += 1
        self.stats.cartesian_reads += request.query.get("useDefaultCartesian") == "true"
        # The single-annotation call fetches content, so "content" faults apply to it.
        fault, answer, chaos = await self._admit(request, target="content", key=scene, server="api")
        if answer is not None:
            return answer
        if (denied := self._check_bearer(request)) is not None:
            return denied
        located = self._locate(scene)
        if located is None or annotation_type not in located[0].annotation_types:
            return json_error(404, f"no annotation {annotation_type!r} for scene {scene}")
        spec, index = located
        item = self._item(spec, index, annotation_type)
        del item["uri"]
        version = self._versions.get((spec.project, scene), 0)
        # Splice the content bytes in rather than parsing and re-encoding them.
        head = json.dumps({"data": item}).encode()[:-2]
        content = await _render(spec, scene, annotation_type, version)
        body = head + b', "content": ' + content + b"}}"
        response, _ = await send_body(
            request, body, content_type="application/json", fault=fault, chaos=chaos
        )
        return response

    async def _v2_input(self, request: web.Request) -> web.StreamResponse:
        input_uuid = request.match_info["input"]

        def answer() -> object:
            located = self._locate_annotation("input", input_uuid)
            if located is None:
                return None
            spec, type_index, index = located
            return self._partial(spec, type_index, index)

        return await self._annotation_read(request, input_uuid, "useDefaultCartesian", answer)

    async def _v2_scene(self, request: web.Request) -> web.StreamResponse:
        scene = request.match_info["scene"]

        def answer() -> object:
            located = self._locate(scene)
            if located is None:
                return None
            spec, index = located
            partials = [self._partial(spec, t, index) for t in range(len(spec.annotation_types))]
            return {"data": partials}

        return await self._annotation_read(request, scene, "useDefaultCartesian", answer)

    async def _by_id(self, request: web.Request) -> web.StreamResponse:
        annotation_id = request.match_info["id"]

        def answer() -> object:
            located = self._locate_annotation("id", annotation_id)
            if located is None:
                return None
            spec, type_index, index = located
            partial = self._partial(spec, type_index, index)
            expires = datetime.now(UTC) + timedelta(seconds=self._signer.ttl)
            return {
                "id": annotation_id,
                "sceneId": partial["sceneUuid"],
                "requestId": int(partial["requestUid"][-8:], 16),
                "requestInputId": partial["inputUuid"],
                "requestUid": partial["requestUid"],
                "isPreliminary": False,
                "signedUrl": partial["uri"],
                "expiresAt": expires.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "created": partial["created"],
            }

        return await self._annotation_read(request, annotation_id, "isoBoxes", answer)

    async def _annotation_read(
        self, request: web.Request, key: str, cartesian: str, answer: Callable[[], object]
    ) -> web.StreamResponse:
        """A v2 or by-id read: faults, the token, then ``answer()`` (``None``: a 404)."""
        self.stats.annotation_requests += 1
        self.stats.cartesian_reads += request.query.get(cartesian) == "true"
        fault, denied, chaos = await self._admit(
            request, target="annotation", key=key, server="api"
        )
        if denied is None:
            denied = self._check_bearer(request)
        if denied is not None:
            return denied
        body = answer()
        if body is None:
            return json_error(404, f"no annotation for {key}")
        return await send_json(request, body, fault=fault, chaos=chaos)

    def _partial(self, spec: KognicProject, type_index: int, index: int) -> dict[str, str]:
        """The v2 partial annotation of scene ``index``'s annotation of one type."""
        item = self._item(spec, index, spec.annotation_types[type_index])
        return {
            "inputUuid": _annotation_uuid(spec.seed, spec.project, "input", type_index, index),
            "sceneUuid": item["inputUuid"],
            "requestUid": self._request_uid(spec, type_index, index),
            "created": item["created"],
            "uri": item["uri"],
        }

    async def _storage(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        self.stats.content_requests[info["scene"]] += 1
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        if (rejected := reject_auth_header(request)) is not None:
            self.stats.storage_requests_with_auth_header += 1
            return rejected
        fault, answer, chaos = await self._admit(
            request, target="content", key=info["scene"], server="storage", storage=True
        )
        if answer is not None:
            return answer
        if (denied := self._signer.check(request)) is not None:
            return denied
        spec = self._projects.get(info["project"])
        version = info["version"].removeprefix("v")
        if (
            spec is None
            or info["atype"] not in spec.annotation_types
            or self._find_index(spec, info["scene"]) is None
            or not version.isdigit()
        ):
            return json_error(404, "no such object")
        body = await _render(spec, info["scene"], info["atype"], int(version))
        response, sent = await send_body(
            request, body, content_type="application/json", fault=fault, ranges=True, chaos=chaos
        )
        self.stats.content_bytes += sent
        return response
