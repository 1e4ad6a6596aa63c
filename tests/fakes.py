"""The fakes tests and benchmarks share. Only slowness is faked: the model inside is real."""

from __future__ import annotations

import time
from typing import Any


class Slow:
    """A model answering `seconds` later than `inner` would (a slow shadow candidate)."""

    def __init__(self, inner: Any, seconds: float) -> None:
        self.inner, self.seconds = inner, seconds

    def predict(self, X: Any) -> Any:
        time.sleep(self.seconds)
        return self.inner.predict(X)

    def score_samples(self, X: Any) -> Any:
        time.sleep(self.seconds)
        return self.inner.score_samples(X)

    def __getitem__(self, index: int) -> Any:  # an anomaly detector's threshold
        return self.inner[index]
