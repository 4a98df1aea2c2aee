"""Sharded runs on Ray: one task per shard, retried when its worker dies, then the manifest.

::

    driver:  check the prefix ─> ray.init ─> board (actor) ─> N × shard task ─> wait, show
             totals from the board every second ─> manifest.json ─> ray.shutdown
    task k:  the part already complete? done. ─> Client ─> the command's pull with
             Selection(shard=(k, N)) into PREFIX/part-k-of-N.zip, always with resume (a retry
             continues from the part's journal) ─> its summary beside the part

Each task reports the same events as ``--progress json`` to the board, a small actor the
driver reads. Ray is an optional dependency, imported only here and only when a sharded
run starts. Credentials travel as a task argument (:class:`TaskEnv`, which never shows
them), never in Ray's runtime environment, which its dashboard and logs display.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, Final, Protocol

import anyio
import orjson

from annopull._client import Client
from annopull._config import Config, load_kognic_credentials
from annopull._errors import AnnopullError, ConfigError
from annopull._fleet.manifest import ManifestReport, build_manifest
from annopull._fleet.parts import PartState, PartStore, part_name, scan_parts, summary_name
from annopull._pipeline.pull import PullReport, Selection
from annopull._progress import Counts, JsonProgress, Progress
from annopull._redact import RedactingFormatter, redact, redact_data, register_secret
from annopull._sinks import Sink, sink_for

__all__ = [
    "FleetProgress",
    "FleetReport",
    "RayOptions",
    "ShardJob",
    "ShardOutcome",
    "ShardPull",
    "TaskEnv",
    "run_fleet",
    "task_env",
]

#: What ``pip`` installs for sharded runs.
RAY_EXTRA: Final = "pip install 'annopull[ray]'"
#: Environment variables a task needs: credentials (and where an object store is).
_TASK_ENV_PREFIXES: Final = ("KOGNIC_", "ANNOLAB_", "AWS_")


class ShardPull(Protocol):
    """What every shard runs: the command's pull, given the shard's sink and selection.

    Implementations are small frozen dataclasses (picklable: each task gets a copy).
    """

    async def __call__(
        self,
        client: Client,
        sink: Sink,
        *,
        selection: Selection,
        resume: bool,
        progress: Progress,
    ) -> PullReport:
        """Pull the shard ``selection`` names into ``sink``."""


class TaskEnv:
    """The environment a task reads credentials from; no repr, log or error shows it.

    Args:
        values: variable name -> value.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    def __repr__(self) -> str:
        return f"TaskEnv({len(self._values)} variables, values hidden)"

    __str__ = __repr__

    def values(self) -> dict[str, str]:
        """The variables, for the task's :class:`Client`."""
        return dict(self._values)


def task_env(env: Mapping[str, str], config: Config) -> TaskEnv:
    """The credentials of ``env`` a task needs, wherever it runs.

    A Kognic credentials file (``KOGNIC_CREDENTIALS``) is read here, on the driver, and its
    client id and secret are passed on, so that workers on other machines need no copy.

    Raises:
        ConfigError: the credentials file is unreadable or expired.
    """
    values = {k: v for k, v in env.items() if k.startswith(_TASK_ENV_PREFIXES)}
    if values.get("KOGNIC_CREDENTIALS") or config.kognic.credentials is not None:
        credentials = load_kognic_credentials(config.kognic, env=env)
        values.pop("KOGNIC_CREDENTIALS", None)
        values["KOGNIC_CLIENT_ID"] = credentials.client_id
        values["KOGNIC_CLIENT_SECRET"] = credentials.client_secret.reveal()
    return TaskEnv(values)


@dataclass(frozen=True, kw_only=True)
class ShardJob:
    """One sharded run: what each shard pulls, and where the parts go.

    Args:
        label: what the run is (``"kognic P/T"``).
        pull: the pull each shard runs.
        store: where the parts go.
        shards: how many shards.
        config: the settings every task runs with (the driver splits the rate limit).
        env: the credentials.
        selection: the filters every shard shares (its shard is added per task).
        interval: seconds between a task's progress reports.
    """

    label: str
    pull: ShardPull
    store: PartStore
    shards: int
    config: Config
    env: TaskEnv
    selection: Selection = field(default_factory=Selection)
    interval: float = 1.0

    def selection_for(self, k: int) -> Selection:
        """Shard ``k``'s selection."""
        return dataclasses.replace(self.selection, shard=(k, self.shards))


@dataclass(frozen=True, kw_only=True)
class ShardOutcome:
    """What one shard's task did: its report (``--summary`` data), or the error that stopped it.

    ``report`` is ``None`` with no error when the part was already complete (a retried task
    whose first attempt finished it, or a part complete before a ``--resume``).
    """

    shard: int
    report: dict[str, Any] | None = None
    error: AnnopullError | None = None


@dataclass(frozen=True, kw_only=True)
class RayOptions:
    """Where the tasks run.

    Args:
        address: ``"local"`` (a Ray instance on this machine, loopback only), ``"auto"``
            (``RAY_ADDRESS`` when set, else local) or a cluster's address.
        cpus: CPUs of a local instance (default: all of this machine's).
        max_retries: times Ray reruns a task whose worker died.
    """

    address: str = "auto"
    cpus: int | None = None
    max_retries: int = 3


@dataclass(frozen=True, kw_only=True)
class FleetProgress:
    """The run's totals at one moment, over every shard's latest report."""

    counts: Counts
    shards: int
    finished: int
    running: int
    limit: int
    retries: int
    elapsed: float

    def event(self, *, label: str, final: bool = False) -> dict[str, Any]:
        """As a ``--progress json`` line (``shard`` is ``null``: the whole run)."""
        counts, elapsed = self.counts, max(self.elapsed, 1e-9)
        return {
            "event": "done" if final else "progress",
            "job": label,
            "shard": None,
            "shards": self.shards,
            "shards_finished": self.finished,
            "shards_running": self.running,
            "elapsed_s": round(self.elapsed, 3),
            **dataclasses.asdict(counts),
            "items_per_s": round((counts.downloaded + counts.failed) / elapsed, 1),
            "bytes_per_s": round(counts.bytes / elapsed),
            "limit": self.limit,
            "retries": self.retries,
        }


@dataclass(frozen=True, kw_only=True)
class FleetReport:
    """What a sharded run did.

    Args:
        shards: the run's number of shards.
        already: shards complete before this run (``--resume``), not run again.
        outcomes: each shard run, in shard order.
        elapsed: seconds.
        manifest: what the manifest step found (``None`` when a shard did not finish).
    """

    shards: int
    already: tuple[int, ...]
    outcomes: tuple[ShardOutcome, ...]
    elapsed: float
    manifest: ManifestReport | None

    @property
    def errors(self) -> tuple[ShardOutcome, ...]:
        """The shards stopped by an error."""
        return tuple(o for o in self.outcomes if o.error is not None)

    def total(self, name: str) -> int:
        """A count summed over the shards' reports (``downloaded``, ``skipped``, ``bytes``)."""
        return sum(int(o.report.get(name, 0)) for o in self.outcomes if o.report is not None)

    @property
    def failed(self) -> int:
        """Items that failed for good, over all shards."""
        return sum(len(o.report.get("failed", [])) for o in self.outcomes if o.report)

    @property
    def ok(self) -> bool:
        """Every shard finished, the manifest is clean, and no item failed."""
        return not self.errors and self.manifest is not None and self.manifest.ok

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready data (the driver's ``--summary``), secrets masked."""
        data: dict[str, Any] = redact_data(
            {
                "status": "complete" if self.ok else "partial",
                "shards": self.shards,
                "already_complete": list(self.already),
                "downloaded": self.total("downloaded"),
                "skipped": self.total("skipped"),
                "failed": self.failed,
                "bytes": self.total("bytes"),
                "elapsed_s": round(self.elapsed, 3),
                "manifest": self.manifest.written if self.manifest is not None else None,
                "parts": [
                    {
                        "shard": o.shard,
                        "part": part_name(o.shard, self.shards),
                        "error": str(o.error) if o.error is not None else None,
                        "report": o.report,
                    }
                    for o in self.outcomes
                ],
            }
        )
        return data


async def run_fleet(
    job: ShardJob,
    *,
    ray_options: RayOptions,
    resume: bool,
    on_progress: Callable[[FleetProgress], None] | None = None,
) -> FleetReport:
    """Run every shard of ``job`` that is not complete as a Ray task; write the manifest.

    Args:
        job: the run.
        ray_options: where the tasks run.
        resume: continue a run whose parts are under the prefix (only the shards not
            complete run again); without it, a prefix holding parts is refused.
        on_progress: called about every second, and at the end, with the run's totals.

    Raises:
        ConfigError: Ray is not installed, or the prefix holds parts of another run (or of
            this one, without ``resume``).
    """
    started = time.monotonic()
    parts = await anyio.to_thread.run_sync(partial(scan_parts, job.store, shards=job.shards))
    present = [k for k in range(1, job.shards + 1) if parts.states[k - 1] is not PartState.MISSING]
    if present and not resume:
        raise ConfigError(
            f"{job.store.description} holds parts of an earlier run (shard "
            f"{', '.join(map(str, present[:5]))}{'…' if len(present) > 5 else ''}): add "
            "--resume to finish it, or delete them to start over"
        )
    already = parts.with_state(PartState.COMPLETE)
    todo = [k for k in range(1, job.shards + 1) if k not in set(already)]
    outcomes: list[ShardOutcome] = []
    if todo:
        ray = import_ray()
        await anyio.to_thread.run_sync(job.store.prepare)
        async with ray_session(ray, ray_options):
            outcomes = await _run_tasks(ray, job, todo, ray_options, started, on_progress)
    manifest = None
    if all(o.error is None for o in outcomes):
        manifest = await anyio.to_thread.run_sync(
            partial(build_manifest, job.store, shards=job.shards)
        )
    return FleetReport(
        shards=job.shards,
        already=already,
        outcomes=tuple(sorted(outcomes, key=lambda o: o.shard)),
        elapsed=time.monotonic() - started,
        manifest=manifest,
    )


def import_ray() -> ModuleType:
    """Ray, imported on first use.

    Raises:
        ConfigError: Ray is not installed (naming the pip command).
    """
    try:
        import ray
    except ImportError:
        raise ConfigError(f"sharded runs on Ray need Ray: {RAY_EXTRA}") from None
    # Typed the same whether or not Ray (and so its types) is installed where mypy runs.
    module: ModuleType = ray
    return module


@contextlib.asynccontextmanager
async def ray_session(ray: ModuleType, options: RayOptions) -> AsyncIterator[None]:
    """Connect to Ray (or start a local instance) for the block; shut it down after."""
    address = options.address
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS") or "local"
    temp_dir: str | None = None
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if address == "local":
        # A local instance binds loopback only, reports nothing home, and keeps its unix
        # sockets under a short folder (their paths must stay under 107 bytes).
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        temp_dir = tempfile.mkdtemp(prefix="annopull-ray-", dir="/tmp")
        kwargs |= {
            "num_cpus": options.cpus or os.cpu_count() or 1,
            "include_dashboard": False,
            "_temp_dir": temp_dir,
            "_node_ip_address": "127.0.0.1",
        }
    logging.getLogger("ray").setLevel(logging.ERROR)
    try:
        await anyio.to_thread.run_sync(partial(ray.init, address=address, **kwargs))
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(ray.shutdown)
    finally:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


async def _run_tasks(
    ray: ModuleType,
    job: ShardJob,
    todo: list[int],
    options: RayOptions,
    started: float,
    on_progress: Callable[[FleetProgress], None] | None,
) -> list[ShardOutcome]:
    job = _with_shared_rate(ray, job, parallel=len(todo))
    board = ray.remote(num_cpus=0)(ProgressBoard).remote()
    task = ray.remote(run_shard).options(num_cpus=1, max_retries=options.max_retries)
    job_ref = ray.put(job)
    pending: dict[Any, int] = {task.remote(job_ref, k, board): k for k in todo}
    outcomes: list[ShardOutcome] = []
    try:
        while pending:
            wait = partial(ray.wait, list(pending), num_returns=len(pending), timeout=job.interval)
            ready, _ = await anyio.to_thread.run_sync(wait)
            for ref in ready:
                outcomes.append(
                    await anyio.to_thread.run_sync(_outcome, ray, ref, pending.pop(ref))
                )
            if on_progress is not None:
                events = await anyio.to_thread.run_sync(ray.get, board.snapshot.remote())
                on_progress(_totals(events, job.shards, len(outcomes), len(pending), started))
    finally:
        if pending:
            # Interrupted: stop the tasks (their parts keep their journals for a resume).
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_cancel_all, ray, list(pending))
    return outcomes


def _cancel_all(ray: ModuleType, refs: list[Any]) -> None:
    for ref in refs:
        with contextlib.suppress(Exception):  # already finished, or the cluster is gone
            ray.cancel(ref, force=True)


def _with_shared_rate(ray: ModuleType, job: ShardJob, *, parallel: int) -> ShardJob:
    """Split the run's requests/s budget between the tasks that run at once."""
    engine = job.config.engine
    if engine.rate_limit <= 0:
        return job
    slots = max(1, min(parallel, int(ray.cluster_resources().get("CPU", 1))))
    shared = dataclasses.replace(engine, rate_limit=engine.rate_limit / slots)
    return dataclasses.replace(job, config=dataclasses.replace(job.config, engine=shared))


def _outcome(ray: ModuleType, ref: Any, shard: int) -> ShardOutcome:
    """The task's outcome; a task Ray gave up on (its worker died too often) as an error."""
    try:
        outcome: ShardOutcome = ray.get(ref)
    except ray.exceptions.RayError as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        return ShardOutcome(
            shard=shard, error=AnnopullError(f"shard {shard}: its task failed: {redact(first)}")
        )
    return outcome


def _totals(
    events: Mapping[int, dict[str, Any]], shards: int, finished: int, running: int, started: float
) -> FleetProgress:
    names = {f.name for f in dataclasses.fields(Counts)}
    counts = Counts.total(
        Counts(**{k: v for k, v in e.items() if k in names}) for e in events.values()
    )
    return FleetProgress(
        counts=counts,
        shards=shards,
        finished=finished,
        running=running,
        limit=sum(int(e.get("limit") or 0) for e in events.values()),
        retries=sum(int(e.get("retries") or 0) for e in events.values()),
        elapsed=time.monotonic() - started,
    )


class ProgressBoard:
    """The actor the tasks report to: each shard's latest progress event."""

    def __init__(self) -> None:
        self._events: dict[int, dict[str, Any]] = {}

    def report(self, shard: int, event: dict[str, Any]) -> None:
        """Keep ``event`` as shard ``shard``'s latest."""
        self._events[shard] = event

    def snapshot(self) -> dict[int, dict[str, Any]]:
        """Every shard's latest event."""
        return dict(self._events)


def run_shard(job: ShardJob, k: int, board: Any) -> ShardOutcome:
    """One shard's task, in a Ray worker: pull shard ``k`` into its part, resuming it.

    Args:
        job: the run.
        k: the shard, 1-based.
        board: the :class:`ProgressBoard` actor to report to.
    """
    _mask_worker_output(job.env)
    return anyio.run(_pull_shard, job, k, board)


#: Names of task variables whose values are secrets (masked wherever a worker writes text).
_SECRET_NAMES: Final = ("SECRET", "TOKEN", "API_KEY", "PASSWORD")


def _mask_worker_output(env: TaskEnv) -> None:
    """Mask secrets in what the worker logs: its stderr goes to Ray's log files, not to a
    terminal the CLI set up with its redacting handler."""
    for name, value in env.values().items():
        if any(word in name for word in _SECRET_NAMES):
            register_secret(value)
    logger = logging.getLogger("annopull")
    if not any(isinstance(h.formatter, RedactingFormatter) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(RedactingFormatter("annopull: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


async def _pull_shard(job: ShardJob, k: int, board: Any) -> ShardOutcome:
    n = job.shards
    parts = await anyio.to_thread.run_sync(partial(scan_parts, job.store, shards=n))
    if parts.states[k - 1] is PartState.COMPLETE:
        # A rerun of a task whose worker died after finishing the part.
        return ShardOutcome(shard=k)
    # An object store's client finds its credentials in the process environment (the
    # AWS chain), not in the mapping the Client reads.
    os.environ.update({k: v for k, v in job.env.values().items() if k.startswith("AWS_")})
    engine = job.config.engine
    sink = sink_for(
        job.store.output(part_name(k, n)),
        compress_level=engine.compress_level,
        storage=job.config.storage,
    )
    progress = JsonProgress(
        job.label, shard=(k, n), interval=job.interval, emit=partial(_report, board, k)
    )
    try:
        async with Client(config=job.config, env=job.env.values()) as client:
            progress.watch(client.transport.stats)
            with progress:
                report = await job.pull(
                    client, sink, selection=job.selection_for(k), resume=True, progress=progress
                )
        summary = report.to_dict()
        await anyio.to_thread.run_sync(_write_summary, job.store, summary_name(k, n), summary)
    except AnnopullError as exc:
        return ShardOutcome(shard=k, error=exc)
    return ShardOutcome(shard=k, report=summary)


def _report(board: Any, k: int, event: dict[str, Any]) -> None:
    board.report.remote(k, event)


def _write_summary(store: PartStore, name: str, summary: Mapping[str, Any]) -> None:
    """The shard's summary beside its part, masked (a failure's reason may quote a body)."""
    with tempfile.TemporaryDirectory(prefix="annopull-summary-") as work:
        path = Path(work) / name
        path.write_bytes(orjson.dumps(redact_data(summary), option=orjson.OPT_INDENT_2) + b"\n")
        store.write(name, path)
