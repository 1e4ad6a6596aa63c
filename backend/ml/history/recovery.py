"""What a training history holds after its main file was lost (damaged or missing).

The archived totals were in the lost file, so they are recounted from the year archives.
The recent entries come from the owner's `rebuild` callback (the service rebuilds them from
the model store's metadata), less the runs and versions the archives already hold, so an
entry is never counted twice. Checks and alerts only survive in the archives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
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
