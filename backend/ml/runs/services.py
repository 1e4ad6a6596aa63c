"""The composition root: the state-holding parts a run, a check or a command writes to,
built once from settings, and the one place a damaged state file is reported.

The history is built at once; the model store and the alerts are built on first use, so a
command that only reads the history (or the progress) imports no ML library and no HTTP
client. Every `StateFile` built here gets `report_recovery` as its `on_recover`: one
critical alert naming the file and where the damaged copy went.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from backend.ml.config import Settings
from backend.ml.history import History
from backend.ml.statefile import Recovery

if TYPE_CHECKING:
    from backend.ml.alerts.service import Alerts
    from backend.ml.registry.store import ModelStore


class Services:
    """The store, the history and the alerts of one `Settings`."""

    def __init__(self, settings: Settings, history: History, *,
                 store: ModelStore | None = None, alerts: Alerts | None = None,
                 keep_loaded: bool = False) -> None:
        self.settings = settings
        self.keep_loaded = keep_loaded  # the store's (ModelStore): for long-lived processes
        self.history = history
        self._store = store
        self._alerts = alerts
        self._building = threading.Lock()  # two threads asking first build one of each

    @classmethod
    def from_settings(cls, settings: Settings, *, keep_loaded: bool = False) -> Services:
        services: Services

        def rebuild() -> dict[str, Any]:
            from backend.ml.registry.backups import rebuild_history

            return rebuild_history(settings.MODELS_DIR)

        def report(recovery: Recovery) -> None:
            services.report_recovery(recovery)

        history = History(settings.history_file, rebuild=rebuild, on_recover=report)
        services = cls(settings, history, keep_loaded=keep_loaded)
        return services

    @property
    def store(self) -> ModelStore:
        with self._building:
            if self._store is None:
                from backend.ml.registry.signing import signer_for
                from backend.ml.registry.store import ModelStore

                settings = self.settings
                self._store = ModelStore(settings.MODELS_DIR,
                                         versioning=settings.MODEL_VERSIONING,
                                         keep_candidates=settings.KEEP_CANDIDATES,
                                         signer=signer_for(settings),
                                         on_recover=self.report_recovery,
                                         keep_loaded=self.keep_loaded)
            return self._store

    @property
    def alerts(self) -> Alerts:
        with self._building:
            if self._alerts is None:
                from backend.ml.alerts.service import Alerts

                self._alerts = Alerts.from_settings(self.settings, self.history)
            return self._alerts

    def report_recovery(self, recovery: Recovery) -> None:
        """A damaged state file was moved aside and rebuilt: the alert service's one alert
        for it (past the cooldown: each recovery is its own event)."""
        self.alerts.report_recovery(recovery)

    def check_state_files(self) -> None:
        """Read every JSON state file once, so that damage is found, recovered and alerted
        at start-up rather than by the first request that meets it."""
        from backend.ml.monitoring.state import read_state
        from backend.ml.runs.progress import progress_file

        logs_dir = self.settings.LOGS_DIR
        self.history.stats()
        self.store.book.read()
        read_state(logs_dir, on_recover=self.report_recovery)
        if self.alerts.cooldown.file is not None:
            self.alerts.cooldown.file.read()
        progress_file(logs_dir, on_recover=self.report_recovery).read()
