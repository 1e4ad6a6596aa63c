"""Shadow scoring: the newest candidate answers the same requests as production, unseen.

With SHADOW_CANDIDATES=true, `POST /ml/models/{name}/predict` answers from production exactly
as without it, then offers (features, production's answer, the production estimator and
version) to a bounded queue without waiting; a full queue drops the batch and counts it.
One daemon thread, started and stopped by the app's lifespan, takes batches one at a time,
finds the model's newest candidate and scores it with `trainer.decision_values`, the same
function production answers with, on the estimator the store loads after checking its
signature and checksum (cached per model by version). It then records how often the two
agree:

- classifiers: rows with the same label;
- regressors: rows where |candidate - production| <= 5% of |production| (plus 1e-6, so
  that zero agrees with zero), and the mean absolute difference of all compared rows;
- anomaly detectors: rows both call anomalous or both call normal, each by its own
  threshold (IsolationForest's `offset_`: anomalous when -score_samples > -offset_). A
  detector without such a threshold gets the Spearman rank correlation instead, averaged
  over batches weighted by their rows; `agreed` is then None (there are no agreeing rows).

The candidate is the newest committed version numbered above production that is neither
production nor previous (a version rolled back from is not a candidate). No candidate:
the batch is skipped and counted. Only answers served as production are shadowed: one
asked for by `version`, or a fallback served because production failed its checksum, is
not production's answer. Counts of compared and agreeing rows are about the current
candidate and start again from zero when a newer candidate appears; batches, drops,
timeouts, errors and skips count everything since the process started.

Deliberately not done: a Python thread cannot be killed, so a batch whose scoring takes
longer than SHADOW_TIMEOUT_SECONDS is counted as a timeout and its result discarded once it
ends; what a slow candidate can cost is bounded by the single worker (one batch scored at
a time) and the queue (at most SHADOW_QUEUE_SIZE batches held). The worker shares no lock
with a request while it scores, and scores under one OpenMP thread like predict; but its
scoring costs about what predict's does, in CPU and in time holding the GIL. Measured with
benchmarks/shadow_predict.py on a busy 2-core machine, a real candidate shadowing every
answer raised predict's median from 18 to 31 ms; SHADOW_SAMPLE_RATE=0.1 (a tenth of the
answers, drawn at random; the rest are neither queued nor counted) left it unchanged. State
lives in this process: with several uvicorn workers each scores and reports its own share
of the requests. Nothing is written to disk.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from backend.ml.config import Settings
from backend.ml.fleet.specs import ModelSpec, get_spec
from backend.ml.registry.aliases import version_number
from backend.ml.registry.store import ModelStore
from backend.ml.runs.services import Services
from backend.ml.training import trainer

logger = logging.getLogger(__name__)

REL_TOLERANCE = 0.05  # regressors agree within 5% of production's value
ABS_TOLERANCE = 1e-6  # ... plus this, so that 0.0 agrees with 0.0
POLL_SECONDS = 0.2  # how often an idle worker looks at the stop signal


@dataclass(frozen=True)
class Batch:
    """One answered request, as offered by predict."""

    spec: ModelSpec
    frame: pd.DataFrame
    production: np.ndarray  # production's decision values for `frame`
    estimator: Any  # the production estimator (for an anomaly detector's threshold)
    version: str  # the production version that answered


@dataclass
class Tally:
    """What the shadow saw of one model. `compared`, `agreed`, `abs_difference` and
    `rank_weight` are about `candidate` only; the rest count since the process started."""

    candidate: str | None = None
    compared: int = 0
    agreed: int | None = 0
    abs_difference: float = 0.0  # regressors: sum of |candidate - production|
    rank_weight: float = 0.0  # anomaly without threshold: sum of rho * rows
    batches: int = 0
    dropped: int = 0
    timeouts: int = 0
    errors: int = 0
    skipped: int = 0


def threshold(estimator: Any) -> float | None:
    """Decision value above which an anomaly detector calls a row anomalous (decision
    values are -score_samples), or None when its final step keeps no `offset_`."""
    step = estimator[-1] if hasattr(estimator, "steps") else estimator
    offset = getattr(step, "offset_", None)
    return None if offset is None else -float(offset)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two score vectors (ties broken by order; 0.0 when either is
    constant)."""
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


class ShadowScorer:
    """The queue, the worker thread and the tallies of one app (see the module docstring).

    `estimators` maps a model to (candidate version, loaded estimator); only the worker
    reads and writes it once started."""

    def __init__(self, store: ModelStore, *, queue_size: int, timeout: float,
                 sample_rate: float = 1.0, seed: int | None = None) -> None:
        self.store = store
        self.timeout = timeout
        self.sample_rate = sample_rate
        self._random = random.Random(seed)
        self.queue: queue.Queue[Batch] = queue.Queue(maxsize=queue_size)
        self.estimators: dict[str, tuple[str, Any]] = {}
        self._tallies: dict[str, Tally] = {}
        self._lock = threading.Lock()  # the tallies only; never held while scoring
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._work, name="shadow-scorer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to stop after its current batch and wait up to `timeout`; batches
        still queued are discarded (a daemon thread never holds the process up)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("shadow scorer still scoring a batch after %.0f s; left to "
                               "end with the process", timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- the request side: never waits -----------------------------------------------------

    def offer(self, spec: ModelSpec, frame: pd.DataFrame, production: np.ndarray,
              estimator: Any, version: str) -> bool:
        """Queue a batch for the worker; False when not sampled (not counted) or when the
        queue is full (counted as dropped)."""
        if self.sample_rate < 1.0 and self._random.random() >= self.sample_rate:
            return False
        try:
            self.queue.put_nowait(Batch(spec, frame, production, estimator, version))
        except queue.Full:
            with self._lock:
                self._tally(spec.name).dropped += 1
            return False
        return True

    # ---- the worker --------------------------------------------------------------------------

    def _work(self) -> None:
        # Not niced: a low-priority thread holding the GIL when the OS descheduled it made
        # requests wait on the GIL (measured: predict p99 43 -> 204 ms); SHADOW_SAMPLE_RATE
        # is the way to spend less CPU on the shadow.
        while not self._stop.is_set():
            try:
                batch = self.queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            try:
                self._score(batch)
            except Exception:  # never let one batch end the worker
                logger.exception("shadow scoring of %s failed", batch.spec.name)
                with self._lock:
                    self._tally(batch.spec.name).errors += 1

    def candidate(self, name: str, production: str) -> str | None:
        """The newest committed version above `production` that is neither production nor
        previous; None when there is none."""
        previous = self.store.aliases(name)["previous"]
        floor = version_number(production)
        newer = [v for v in self.store.committed(name)
                 if version_number(v) > floor and v not in (production, previous)]
        return newer[-1] if newer else None

    def _estimator(self, name: str, version: str) -> Any:
        cached = self.estimators.get(name)
        if cached is not None and cached[0] == version:
            return cached[1]
        estimator, _ = self.store.load(name, version)  # signature and checksum checked
        self.estimators[name] = (version, estimator)
        return estimator

    def _score(self, batch: Batch) -> None:
        spec = batch.spec
        started = time.monotonic()
        try:
            version = self.candidate(spec.name, batch.version)
            if version is None:
                with self._lock:
                    tally = self._tally(spec.name)
                    tally.batches += 1
                    tally.skipped += 1
                return
            estimator = self._estimator(spec.name, version)
            with threadpool_limits(limits=1, user_api="openmp"):
                values = trainer.decision_values(spec, estimator, batch.frame)
            compared, agreed, extra = compare(spec, batch, values, estimator)
        except Exception as exc:
            logger.warning("shadow: %s candidate failed: %s", spec.name, exc)
            with self._lock:
                tally = self._tally(spec.name)
                tally.batches += 1
                tally.errors += 1
            return
        elapsed = time.monotonic() - started
        with self._lock:
            tally = self._tally(spec.name)
            tally.batches += 1
            if elapsed > self.timeout:
                tally.timeouts += 1
                return
            if tally.candidate != version:  # a newer candidate: its own agreement
                tally.candidate, tally.compared, tally.abs_difference = version, 0, 0.0
                tally.agreed, tally.rank_weight = 0, 0.0
            tally.compared += compared
            if agreed is None or tally.agreed is None:
                tally.agreed = None
                tally.rank_weight += extra
            else:
                tally.agreed += agreed
                tally.abs_difference += extra

    def _tally(self, name: str) -> Tally:
        return self._tallies.setdefault(name, Tally())

    # ---- reading -------------------------------------------------------------------------------

    def summary(self, name: str) -> dict[str, Any] | None:
        """The shadow's view of one model, None when no batch of it was ever offered:
        `candidate` (version or None), `compared` and `agreed` (rows, for the candidate;
        `agreed` is None for a rank correlation), `agreement` (their ratio, or the rank
        correlation; None before any row was compared), `batches` (taken by the worker:
        compared, skipped, timed out or failed), `dropped` (queue full), `timeouts`,
        `errors`, `skipped` (no candidate), and for regressors `mean_abs_difference`."""
        spec = get_spec(name)
        with self._lock:
            tally = self._tallies.get(name)
            if tally is None:
                return None
            t = Tally(**vars(tally))
        if not t.compared:
            agreement = None
        elif t.agreed is None:
            agreement = t.rank_weight / t.compared
        else:
            agreement = t.agreed / t.compared
        out: dict[str, Any] = {
            "candidate": t.candidate, "compared": t.compared, "agreed": t.agreed,
            "agreement": agreement, "batches": t.batches, "dropped": t.dropped,
            "timeouts": t.timeouts, "errors": t.errors, "skipped": t.skipped}
        if spec.task == "regression":
            out["mean_abs_difference"] = (t.abs_difference / t.compared if t.compared
                                          else None)
        return out

    def names(self) -> list[str]:
        """Models with a tally, in name order."""
        with self._lock:
            return sorted(self._tallies)


def compare(spec: ModelSpec, batch: Batch, values: np.ndarray,
            candidate: Any) -> tuple[int, int | None, float]:
    """(rows compared, rows agreeing or None, extra): extra is the sum of absolute
    differences for a regressor, rho * rows for a rank correlation, else 0."""
    production = np.asarray(batch.production)
    values = np.asarray(values)
    rows = len(production)
    if values.shape != production.shape:
        raise ValueError(f"candidate answered {values.shape}, production {production.shape}")
    if spec.task == "classification":
        return rows, int(np.sum(values == production)), 0.0
    if spec.task == "regression":
        difference = np.abs(values.astype(float) - production.astype(float))
        close = difference <= REL_TOLERANCE * np.abs(production) + ABS_TOLERANCE
        return rows, int(np.sum(close)), float(np.sum(difference))
    ours, theirs = threshold(batch.estimator), threshold(candidate)
    if ours is not None and theirs is not None:
        return rows, int(np.sum((production > ours) == (values > theirs))), 0.0
    if rows < 2:
        return 0, None, 0.0  # one row has no ranks to correlate
    return rows, None, spearman(production, values) * rows


def start_shadow(settings: Settings, services: Services) -> ShadowScorer | None:
    """A started scorer when SHADOW_CANDIDATES is on, else None (no thread, no queue)."""
    if not settings.SHADOW_CANDIDATES:
        return None
    scorer = ShadowScorer(services.store, queue_size=settings.SHADOW_QUEUE_SIZE,
                          timeout=settings.SHADOW_TIMEOUT_SECONDS,
                          sample_rate=settings.SHADOW_SAMPLE_RATE)
    scorer.start()
    logger.info("shadow scoring of candidates on (queue %d batches, timeout %.1f s, sample "
                "rate %g)", settings.SHADOW_QUEUE_SIZE, settings.SHADOW_TIMEOUT_SECONDS,
                settings.SHADOW_SAMPLE_RATE)
    return scorer


def stop_shadow(scorer: ShadowScorer | None) -> None:
    if scorer is not None:
        scorer.stop(timeout=scorer.timeout + 1.0)
