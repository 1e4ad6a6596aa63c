"""What a training history holds after its main file was lost (damaged or missing).

The archived totals were in the lost file, so they are recounted from the year archives.
The recent entries come from the owner's `rebuild` callback (the service rebuilds them from
the model store's metadata), less the runs and versions the archives already hold, so an
entry is never counted twice. Checks and alerts only survive in the archives.

Also here: reporting each recovery once, after the history's lock is released.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from backend.ml.history.archive import YearArchives
from backend.ml.history.document import (
    HistoryDocument,
    YearArchive,
    clone,
    parse_timestamp,
    version_key,
)
from backend.ml.statefile import Recovery

logger = logging.getLogger(__name__)

Rebuild = Callable[[], Mapping[str, Any]]
OnRecover = Callable[[Recovery], None]
_OLDEST = datetime.min.replace(tzinfo=UTC)


class MissingFileRecovery(Recovery):
    """The main file was missing while year archives exist, and was rebuilt (nothing was
    moved aside: `moved_to` is the file's own path)."""

    def message(self) -> str:
        return (f"state file {self.path.name} was missing ({self.reason}) and was "
                f"rebuilt: {self.rebuilt}")


def rebuild_document(archives: YearArchives, rebuild: Rebuild | None) -> HistoryDocument:
    """A new main document: archive totals recounted, recent entries from `rebuild`. Never
    raises for a failing callback (it is logged and nothing recent is rebuilt)."""
    found = archives.recount()
    recent = _recent(rebuild)
    doc = HistoryDocument(archive=found.totals)
    doc.trainings = sorted(
        (t for t in recent.trainings if str(t.get("run_id")) not in found.run_ids),
        key=lambda t: parse_timestamp(t.get("timestamp")) or _OLDEST)
    doc.checks = recent.checks
    doc.alerts = recent.alerts
    doc.model_versions = {
        name: [v for v in entries if (name, version_key(v)) not in found.versions]
        for name, entries in recent.model_versions.items()}
    return doc


def describe_rebuilt(doc: HistoryDocument) -> str:
    """For people: what a rebuilt document holds."""
    versions = sum(map(len, doc.model_versions.values()))
    archived = doc.archive.trainings.count
    return (f"{len(doc.trainings)} recent trainings and {versions} model versions rebuilt; "
            f"archived totals recounted from the year archives ({archived} trainings)")


def _recent(rebuild: Rebuild | None) -> YearArchive:
    if rebuild is None:
        return YearArchive()
    try:
        part = clone(dict(rebuild()))
        part.pop("archive", None)
        return YearArchive.model_validate(part)
    except Exception:
        logger.exception("rebuilding the training history failed; starting it empty")
        return YearArchive()


class Reports:
    """Recoveries on their way to `on_recover`: queued while the lock is held, reported once
    each when it is released (the report may write to the history itself)."""

    def __init__(self, on_recover: OnRecover | None) -> None:
        self.on_recover = on_recover
        self.reported: list[Recovery] = []
        self._pending: list[Recovery] = []
        self._guard = threading.Lock()

    def queue(self, recoveries: Iterable[Recovery]) -> None:
        with self._guard:
            self._pending += recoveries

    def flush(self) -> None:
        """Report what is queued (the lock released)."""
        with self._guard:
            pending, self._pending = self._pending, []
        for recovery in pending:
            self.report(recovery)

    def report(self, recovery: Recovery) -> None:
        self.reported.append(recovery)
        if self.on_recover is None:
            return
        try:
            self.on_recover(recovery)
        except Exception:  # a failed report must not undo or repeat the recovery
            logger.exception("reporting the recovery of %s failed", recovery.path)
