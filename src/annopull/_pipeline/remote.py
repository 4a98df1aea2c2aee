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
    """Commit the rows of a checkpoint: to the store's state first, when there is one.

    A local output's rows are durable once its sink flushed, and its ledger is the truth.
    An object store's truth is its state: the rows whose bytes are in uploaded parts go
    into a manifest there; the others wait for a later checkpoint (their part is not full
    yet). The local ledger is then only a cache that a resume never trusts (it is rebuilt
    from the state), so it commits every row, durable or not.
    """
    if state is not None:
        rows: list[StateRow] = [
            (r.key, r.version, r.name, r.receipt) for r in ledger.rows_after(state.committed)
        ]
        if rows:
            state.commit(rows)
    ledger.commit()
