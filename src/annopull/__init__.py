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
    NotFoundError,
    ResumeError,
    TransferError,
    UnsafeEntryError,
    ZipFormatError,
)
from annopull._progress import NullProgress, Progress, TerminalProgress
from annopull._sinks import (
    DirectorySink,
    EntryInfo,
    JsonlSink,
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
    DownloadReport,
    Failure,
    KognicSource,
    Selection,
)

__version__ = "0.1.0"

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
    "JsonlSink",
    "KognicConfig",
    "KognicCredentials",
    "KognicSource",
    "NotFoundError",
    "NullProgress",
    "Progress",
    "ProjectExport",
    "ResumeError",
    "RetryPolicy",
    "Secret",
    "Selection",
    "Sink",
    "SinkResult",
    "TerminalProgress",
    "TransferError",
    "UnsafeEntryError",
    "ZipFormatError",
    "ZipSink",
    "load_config",
    "sink_for",
]
