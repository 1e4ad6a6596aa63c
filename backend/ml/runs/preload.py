"""What a worker does before its request comes: import its libraries (`warm_up`, every
worker), and, for a spare kept ahead of need, read production (`Preload`).

A run's gate re-scores production on each candidate's holdout, so it reads every production
model through skops: thousands of tree arrays per model, most of the gate's cost. A spare
(`launcher.Spare`, started ahead of need) has nothing to do until its request comes, often
for hours, so it reads them then, in a thread, into a store that keeps what it loaded
(`ModelStore(keep_loaded=True)`). The job is given that store's `Services`.

Nothing is trusted for having been read early: every load the job makes verifies the
file's signature and SHA-256 again, and only a version whose digest is the one read ahead
comes from memory (a promotion or rollback in between is read afresh). The request never
waits for more than the model being read when it comes. What it costs: the spare holds the
17 (about 60 MB on the default world) while it waits.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from backend.ml.runs.services import Services

logger = logging.getLogger(__name__)


def warm_up() -> None:
    """Import what every job needs before the request comes: a spare worker pays this while
    nobody waits for it."""
    import backend.ml.registry.store  # noqa: F401
    import backend.ml.runs.runner  # noqa: F401  (pandas, scikit-learn, SQLAlchemy)

    with contextlib.suppress(ImportError):  # the store's model format, imported on first use
        import skops.io  # noqa: F401


class Preload:
    """Production of every model, read into a new `Services`' store in the background."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.loaded: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="preload-production",
                                        daemon=True)

    @classmethod
    def start(cls, services: Services | None = None) -> Preload | None:
        """Start reading into `services` (whose store must keep what it loads), by default
        new ones of this process's settings; None when those cannot be had (the job
        reports that itself)."""
        try:
            if services is None:
                from backend.ml.config import get_settings

                services = Services.from_settings(get_settings(), keep_loaded=True)
        except Exception as exc:
            logger.debug("no preload: %s", exc)
            return None
        preload = cls(services)
        preload._thread.start()
        return preload

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every model was read (or `timeout`); whether it was."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def finish(self) -> Services:
        """Stop after the model being read, and hand over the services holding the rest."""
        self._stop.set()
        self._thread.join()
        logger.debug("preloaded production of %d models: %s", len(self.loaded),
                     ", ".join(self.loaded) or "none")
        return self.services

    def _read(self) -> None:
        from backend.ml.fleet.specs import MODEL_NAMES

        for name in MODEL_NAMES:
            if self._stop.is_set():
                return
            try:
                self.services.store.load(name)  # production; verified as any load is
                self.loaded.append(name)
            except Exception as exc:  # none yet, or it does not verify: the job says so
                logger.debug("not preloaded: %s: %s", name, exc)
