"""A fitted Pipeline as bytes and back: skops with an allow-list, joblib where it cannot.

skops stores an object as a tree of types and refuses, at load, any type it was not told to
trust, so a model file cannot run code on its own. The types trusted for a model are derived
from its spec, never from the file: the classes of the spec's (unfitted) Pipeline, plus the
internal types each estimator family declares in `estimators.SKOPS_INTERNALS`.

A fit whose stored form needs a type outside that list (an estimator family that declares
nothing, or a library change) is stored with joblib instead, with a warning naming the types;
such a file unpickles, which runs code, so it rests on its signature alone (`signing.py`).
Both formats are signed, and the signature is checked before either is read.
"""

from __future__ import annotations

import io
import logging
import threading
from typing import TYPE_CHECKING, Any, Literal

from backend.ml.fleet.specs import ModelSpec

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

logger = logging.getLogger(__name__)

Format = Literal["skops", "joblib"]
SUFFIXES: dict[str, str] = {"skops": ".skops", "joblib": ".joblib"}
LEGACY_FORMAT: Format = "joblib"  # versions stored before formats were recorded
# One skops load at a time in a process. numpy reads each stored array's header with
# ast.literal_eval, and CPython 3.11's ast is not thread-safe: two loads at once (a predict
# loading production while the shadow scorer loads a candidate) once raised "SystemError:
# AST constructor recursion depth mismatch", and the intact production file was reported
# as unreadable. Loads are rare (the serving cache keeps what it loaded): waiting is cheap.
_SKOPS_LOADING = threading.Lock()


class FormatError(Exception):
    """The bytes cannot become a model of this spec; the message says why."""


def trusted_types(spec: ModelSpec) -> set[str]:
    """The type names a stored model of `spec` may hold beyond those skops trusts itself."""
    from sklearn.base import BaseEstimator

    from backend.ml.fleet.estimators import SKOPS_INTERNALS

    pipeline = spec.make_estimator()
    parts: list[Any] = [pipeline, *pipeline.get_params(deep=True).values()]
    classes = {type(p) for p in parts if isinstance(p, BaseEstimator)}
    names = {f"{c.__module__}.{c.__qualname__}" for c in classes}
    for cls in classes:
        names.update(SKOPS_INTERNALS.get(cls, ()))
    return names


def dump(spec: ModelSpec, estimator: Pipeline) -> tuple[Format, bytes]:
    """(format, bytes) of a fitted Pipeline: skops when every type it needs is allowed."""
    import skops.io as sio

    payload = sio.dumps(estimator)
    outside = sorted(set(sio.get_untrusted_types(data=payload)) - trusted_types(spec))
    if not outside:
        return "skops", payload
    logger.warning("%s cannot be stored with skops: its fitted model holds %s, outside the "
                   "allow-list of its spec (declare them in estimators.SKOPS_INTERNALS if "
                   "they are safe); stored with joblib, which unpickles, signed", spec.name,
                   ", ".join(outside))
    import joblib

    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    return "joblib", buffer.getvalue()


def load(spec: ModelSpec, fmt: str, payload: bytes) -> Any:
    """The object in `payload` (already verified by signature and checksum).

    FormatError for an unknown format, a type outside the allow-list, or bytes that do not
    load (a model stored by other library versions may not)."""
    try:
        if fmt == "skops":
            import skops.io as sio
            from skops.io.exceptions import UntrustedTypesFoundException

            try:  # skops refuses any type outside `trusted` before it builds anything
                with _SKOPS_LOADING:
                    return sio.loads(payload, trusted=sorted(trusted_types(spec)))
            except UntrustedTypesFoundException as exc:
                raise FormatError(f"holds types outside the allow-list of {spec.name}: "
                                  f"{exc}") from exc
        if fmt == "joblib":
            import joblib

            return joblib.load(io.BytesIO(payload))
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"cannot be read as {fmt}: {type(exc).__name__}: {exc}") from exc
    raise FormatError(f"has an unknown format {fmt!r} (known: {', '.join(SUFFIXES)})")
