"""annopull: bulk, streaming, resumable pulls of annotation exports."""

from annopull.errors import (
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
]
