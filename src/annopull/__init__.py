"""annopull: bulk, streaming, resumable pulls of annotation exports from Kognic and AnnoLab.

Start with :class:`Client`; outputs are sinks (:class:`ZipSink`, :class:`DirectorySink`,
:class:`JsonlSink`); every error derives from :class:`AnnopullError`. The fake platforms for
offline tests live in :mod:`annopull.testing`.
"""

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
from annopull._progress import NullProgress, Progress, TerminalProgress
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
from annopull._sources.kognic import Annotation, AnnotationRef, KognicSource
from annopull._sources.kognic_reads import SceneAnnotation, read_scene_list
from annopull._sources.kognic_transform import ParsedAnnotation
from annopull._sources.urls import UrlList, UrlSource, read_url_list
from annopull._version import __version__ as __version__

#: The report of a Kognic download: the pipeline's one report type.
DownloadReport = PullReport

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
