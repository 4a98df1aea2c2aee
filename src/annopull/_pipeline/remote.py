"""The ledger of an output whose resume state lives in an object store.

The local SQLite ledger is then only a cache (in the temp folder): the bucket holds the
truth, as manifests of committed rows (:class:`~annopull._storage.base.RemoteState`). A
resume on any machine rebuilds the cache from them, so a stale local copy never counts.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from annopull._pipeline.ledger import Ledger, LedgerRow
from annopull._storage.base import RemoteState, RunHeader, StateRow

__all__ = ["commit_durable", "rebuild_ledger"]

#: Rows inserted per batch while rebuilding: the manifests stream, they are never all in RAM.
_BATCH: Final = 4096


def rebuild_ledger(
    state: RemoteState,
    header: RunHeader,
    path: Path,
    *,
    kind: str,
    fingerprint: Mapping[str, str],
) -> Ledger:
    """A fresh local ledger at ``path`` holding every committed row of ``state``.

    Raises:
        ResumeError: the unfinished run is of another kind, source or selection (the
            message names what differs), or its state is unreadable.
    """
    ledger = Ledger.create(path, kind=header.kind, fingerprint=header.fingerprint)
    try:
        rows = state.rows()
        while batch := list(itertools.islice(rows, _BATCH)):
            ledger.record(LedgerRow(key=k, version=v, name=n, receipt=r) for k, v, n, r in batch)
        ledger.commit()
    finally:
        ledger.close()
    # Opened again as any interrupted run's ledger is: the kind and fingerprint checked.
    return Ledger.open_existing(path, kind=kind, fingerprint=fingerprint)


def commit_durable(state: RemoteState | None, ledger: Ledger) -> None:
    """Commit the ledger's pending rows if the store says their bytes are durable.

    Local outputs (no ``state``) always are: their sink's flush made them so. An object
    store's rows go into a manifest first; when no part went up yet they stay pending (the
    ledger's own connection still sees them, for de-duplication) until a later checkpoint.
    """
    if state is not None:
        rows: list[StateRow] = [(r.key, r.version, r.name, r.receipt) for r in ledger.pending()]
        if not state.commit(rows):
            return
    ledger.commit()
