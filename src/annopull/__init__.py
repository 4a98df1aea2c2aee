"""annopull: bulk, streaming, resumable pulls of annotation exports from Kognic and AnnoLab.

Start with :class:`Client`; outputs are sinks (:class:`ZipSink`, :class:`DirectorySink`,
:class:`JsonlSink`); every error derives from :class:`AnnopullError`. The fake platforms for
offline tests live in :mod:`annopull.testing`.
"""

import importlib
import typing

# The root imports none of its names up front (PEP 562): `import annopull._cli`, and so every
# CLI run, imports this package first, and loading everything here cost about 0.7 s of CPU
# (the AnnoLab source, the S3 client, rich) that `annopull kognic -o x.zip` never uses. A
# name's home module is imported on first access and the name is then cached in this module.
# The imports under TYPE_CHECKING are what mypy and IDEs see; tests/test_public_api.py checks
# that they agree with _HOMES.
if typing.TYPE_CHECKING:
    from annopull._client import Client
    from annopull._config import (
        AnnoLabConfig,
        Config,
        EngineConfig,
        KognicConfig,
        KognicCredentials,
        RetryPolicy,
        Secret,
        load_config,
    )
    from annopull._errors import (
        AnnopullError,
        ApiError,
        AuthError,
        ConfigError,
        ExportFailedError,
        InvalidResponseError,
        NetworkError,
        NotFoundError,
        RequestTimeoutError,
        ResumeError,
        RetryableStatusError,
        RetryBudgetExhaustedError,
        StorageError,
        TransferError,
        TransformError,
        TruncatedBodyError,
        UnsafeEntryError,
        WorkerPoolError,
        ZipFormatError,
    )
    from annopull._pipeline.pull import (
        Failure,
        InterruptedRunError,
        Item,
        PullReport,
        Selection,
        Source,
        Stage,
        Staged,
        pull,
    )
    from annopull._pipeline.transform import Renamed
    from annopull._progress import (
        NullProgress,
        Progress,
        TerminalProgress,
    )
    from annopull._sinks import (
        DirectorySink,
        EntryInfo,
        JsonlSink,
        Records,
        Sink,
        SinkResult,
        ZipSink,
        sink_for,
    )
    from annopull._sources.annolab import (
        AnnoLabSource,
        ExportJob,
        ExportOutcome,
        ExportRequest,
        ExportResult,
        InstrumentsExport,
        ProjectExport,
    )
    from annopull._sources.kognic import (
        Annotation,
        AnnotationRef,
        KognicSource,
    )
    from annopull._sources.kognic_reads import (
        SceneAnnotation,
        read_scene_list,
    )
    from annopull._sources.kognic_transform import ParsedAnnotation
    from annopull._sources.urls import (
        UrlList,
        UrlSource,
        read_url_list,
    )
    from annopull._version import __version__ as __version__

    #: The report of a Kognic download: the pipeline's one report type.
    DownloadReport = PullReport

#: Public name -> (home module, name there).
_HOMES: dict[str, tuple[str, str]] = {
    "Client": ("annopull._client", "Client"),
    "AnnoLabConfig": ("annopull._config", "AnnoLabConfig"),
    "Config": ("annopull._config", "Config"),
    "EngineConfig": ("annopull._config", "EngineConfig"),
    "KognicConfig": ("annopull._config", "KognicConfig"),
    "KognicCredentials": ("annopull._config", "KognicCredentials"),
    "RetryPolicy": ("annopull._config", "RetryPolicy"),
    "Secret": ("annopull._config", "Secret"),
    "load_config": ("annopull._config", "load_config"),
    "AnnopullError": ("annopull._errors", "AnnopullError"),
    "ApiError": ("annopull._errors", "ApiError"),
    "AuthError": ("annopull._errors", "AuthError"),
    "ConfigError": ("annopull._errors", "ConfigError"),
    "ExportFailedError": ("annopull._errors", "ExportFailedError"),
    "InvalidResponseError": ("annopull._errors", "InvalidResponseError"),
    "NetworkError": ("annopull._errors", "NetworkError"),
    "NotFoundError": ("annopull._errors", "NotFoundError"),
    "RequestTimeoutError": ("annopull._errors", "RequestTimeoutError"),
    "ResumeError": ("annopull._errors", "ResumeError"),
    "RetryableStatusError": ("annopull._errors", "RetryableStatusError"),
    "RetryBudgetExhaustedError": ("annopull._errors", "RetryBudgetExhaustedError"),
    "StorageError": ("annopull._errors", "StorageError"),
    "TransferError": ("annopull._errors", "TransferError"),
    "TransformError": ("annopull._errors", "TransformError"),
    "TruncatedBodyError": ("annopull._errors", "TruncatedBodyError"),
    "UnsafeEntryError": ("annopull._errors", "UnsafeEntryError"),
    "WorkerPoolError": ("annopull._errors", "WorkerPoolError"),
    "ZipFormatError": ("annopull._errors", "ZipFormatError"),
    "Failure": ("annopull._pipeline.pull", "Failure"),
    "InterruptedRunError": ("annopull._pipeline.pull", "InterruptedRunError"),
    "Item": ("annopull._pipeline.pull", "Item"),
    "PullReport": ("annopull._pipeline.pull", "PullReport"),
    "Selection": ("annopull._pipeline.pull", "Selection"),
    "Source": ("annopull._pipeline.pull", "Source"),
    "Stage": ("annopull._pipeline.pull", "Stage"),
    "Staged": ("annopull._pipeline.pull", "Staged"),
    "pull": ("annopull._pipeline.pull", "pull"),
    "Renamed": ("annopull._pipeline.transform", "Renamed"),
    "NullProgress": ("annopull._progress", "NullProgress"),
    "Progress": ("annopull._progress", "Progress"),
    "TerminalProgress": ("annopull._progress", "TerminalProgress"),
    "DirectorySink": ("annopull._sinks", "DirectorySink"),
    "EntryInfo": ("annopull._sinks", "EntryInfo"),
    "JsonlSink": ("annopull._sinks", "JsonlSink"),
    "Records": ("annopull._sinks", "Records"),
    "Sink": ("annopull._sinks", "Sink"),
    "SinkResult": ("annopull._sinks", "SinkResult"),
    "ZipSink": ("annopull._sinks", "ZipSink"),
    "sink_for": ("annopull._sinks", "sink_for"),
    "AnnoLabSource": ("annopull._sources.annolab", "AnnoLabSource"),
    "ExportJob": ("annopull._sources.annolab", "ExportJob"),
    "ExportOutcome": ("annopull._sources.annolab", "ExportOutcome"),
    "ExportRequest": ("annopull._sources.annolab", "ExportRequest"),
    "ExportResult": ("annopull._sources.annolab", "ExportResult"),
    "InstrumentsExport": ("annopull._sources.annolab", "InstrumentsExport"),
    "ProjectExport": ("annopull._sources.annolab", "ProjectExport"),
    "Annotation": ("annopull._sources.kognic", "Annotation"),
    "AnnotationRef": ("annopull._sources.kognic", "AnnotationRef"),
    "KognicSource": ("annopull._sources.kognic", "KognicSource"),
    "SceneAnnotation": ("annopull._sources.kognic_reads", "SceneAnnotation"),
    "read_scene_list": ("annopull._sources.kognic_reads", "read_scene_list"),
    "ParsedAnnotation": ("annopull._sources.kognic_transform", "ParsedAnnotation"),
    "UrlList": ("annopull._sources.urls", "UrlList"),
    "UrlSource": ("annopull._sources.urls", "UrlSource"),
    "read_url_list": ("annopull._sources.urls", "read_url_list"),
    "__version__": ("annopull._version", "__version__"),
    "DownloadReport": ("annopull._pipeline.pull", "PullReport"),
}

__all__ = [
    "AnnoLabConfig",
    "AnnoLabSource",
    "AnnopullError",
    "Annotation",
    "AnnotationRef",
    "ApiError",
    "AuthError",
    "Client",
    "Config",
    "ConfigError",
    "DirectorySink",
    "DownloadReport",
    "EngineConfig",
    "EntryInfo",
    "ExportFailedError",
    "ExportJob",
    "ExportOutcome",
    "ExportRequest",
    "ExportResult",
    "Failure",
    "InstrumentsExport",
    "InterruptedRunError",
    "InvalidResponseError",
    "Item",
    "JsonlSink",
    "KognicConfig",
    "KognicCredentials",
    "KognicSource",
    "NetworkError",
    "NotFoundError",
    "NullProgress",
    "ParsedAnnotation",
    "Progress",
    "ProjectExport",
    "PullReport",
    "Records",
    "Renamed",
    "RequestTimeoutError",
    "ResumeError",
    "RetryBudgetExhaustedError",
    "RetryPolicy",
    "RetryableStatusError",
    "SceneAnnotation",
    "Secret",
    "Selection",
    "Sink",
    "SinkResult",
    "Source",
    "Stage",
    "Staged",
    "StorageError",
    "TerminalProgress",
    "TransferError",
    "TransformError",
    "TruncatedBodyError",
    "UnsafeEntryError",
    "UrlList",
    "UrlSource",
    "WorkerPoolError",
    "ZipFormatError",
    "ZipSink",
    "load_config",
    "pull",
    "read_scene_list",
    "read_url_list",
    "sink_for",
]


# Under TYPE_CHECKING mypy sees the explicit imports above and nothing else, so a misspelt
# `annopull.X` stays an error for the package's users instead of typing as `object`.
if not typing.TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        """Import a public name's home module on first access (PEP 562)."""
        try:
            module, attribute = _HOMES[name]
        except KeyError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        """The module's names, the not yet loaded public ones included."""
        return sorted({*globals(), *_HOMES})
