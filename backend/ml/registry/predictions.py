"""What a promoted version predicted on its own holdout, kept so the next gate need not
predict those rows again.

The gate re-scores production on each candidate's holdout: the newest rows of the training
window. One night later that window has moved by a day, so almost every row is one that
production's own fit already predicted when it was the candidate. A fitted model is a pure
function of a row's features, so those predictions are kept by a 64-bit hash of each row's
feature values (`row_keys`) and reused for a row whose features hash the same; only the
rows that are new (or changed) are predicted. The gate's evidence is the same numbers; on
the default world this is most of the gate's prediction time.

    <name>/.predictions/v0007.npz    one signed JSON header line, then an .npz (no pickle)

The header names the model, version, features and row count and holds the SHA-256 of the
.npz, signed with the model signing key; a file that does not verify is ignored with a
warning (the rows are predicted), never read. It is a cache: a missing file (a version
saved by an earlier release, restored from a backup, or whose write a crash cut short) or
one signed with a rotated-out key costs only time. Only promoted versions get one, and
writing one removes those of versions retention has deleted.

A hash collision (two different feature rows with one 64-bit key) would lend one row
another's prediction; with tens of thousands of rows the chance is about 1e-11.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from backend.ml.fsio import atomic_write_bytes

if TYPE_CHECKING:
    from backend.ml.registry.store import ModelStore

logger = logging.getLogger(__name__)

FOLDER = ".predictions"
KIND = "holdout-predictions"


@dataclass(frozen=True)
class Memo:
    """A version's predictions by row key, the keys sorted."""

    keys: np.ndarray
    values: np.ndarray


def row_keys(X: pd.DataFrame) -> np.ndarray:
    """A 64-bit hash of each row's values (not its index), the same in every process."""
    return np.asarray(pd.util.hash_pandas_object(X, index=False, categorize=True),
                      dtype=np.uint64)


def memo_path(store: ModelStore, name: str, version: str) -> Path:
    return store.meta_path(name, version).parent / FOLDER / f"{version}.npz"


def storable(values: np.ndarray) -> np.ndarray | None:
    """`values` in a form .npz keeps without pickle (labels as text), or None."""
    if values.dtype.kind in "biufU":
        return values
    if values.dtype.kind == "O" and all(isinstance(v, str) for v in values):
        return values.astype(str)
    return None


def remember(store: ModelStore, name: str, version: str, features: list[str],
             keys: np.ndarray, values: np.ndarray) -> Path | None:
    """Keep a version's holdout predictions; the file, or None when they cannot be kept.
    A failure to write is logged, never raised: the version is whole without it."""
    kept = storable(np.asarray(values))
    if kept is None or len(kept) != len(keys):
        return None
    order = np.argsort(keys, kind="stable")
    buffer = io.BytesIO()
    np.savez(buffer, keys=keys[order], values=kept[order])
    body = buffer.getvalue()
    header = store.signer.signed({"kind": KIND, "name": name, "version": version,
                                  "features": list(features), "rows": len(kept),
                                  "object_labels": bool(values.dtype.kind == "O"),
                                  "sha256": hashlib.sha256(body).hexdigest()})
    path = memo_path(store, name, version)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(header).encode() + b"\n" + body)
        _forget_deleted(store, name, path.parent)
    except OSError as exc:
        logger.warning("%s %s: holdout predictions not kept (%s); the next gate predicts "
                       "every row", name, version, exc)
        return None
    return path


def recall(store: ModelStore, name: str, version: str, features: list[str]) -> Memo | None:
    """A version's kept predictions when its file verifies under the signing key and was
    made for these features; else None (a bad file is logged and not read)."""
    path = memo_path(store, name, version)
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    line, _, body = raw.partition(b"\n")
    try:
        header: dict[str, Any] = json.loads(line)
        problem = store.signer.problem(header)
    except (ValueError, AttributeError):
        problem = "has no readable header"
    if problem is None and (header.get("kind"), header.get("name"),
                            header.get("version")) != (KIND, name, version):
        problem = "belongs to another version"
    if problem is None and hashlib.sha256(body).hexdigest() != header.get("sha256"):
        problem = "was changed since it was written"
    if problem is not None:
        logger.warning("%s: ignored, it %s; the gate predicts every row", path, problem)
        return None
    if header.get("features") != list(features):
        return None  # made for other features: of no use, not a fault
    with np.load(io.BytesIO(body), allow_pickle=False) as data:
        keys, values = data["keys"], data["values"]
    if header.get("object_labels"):
        values = values.astype(object)
    return Memo(keys, values)


def predicted(memo: Memo | None, keys: np.ndarray,
              predict: Any) -> tuple[np.ndarray, int]:
    """Predictions for rows with these keys: kept ones where the memo has the key,
    `predict(mask)` (the rows of `mask`) for the rest. Also how many rows were reused."""
    if memo is None or len(memo.keys) == 0:
        return np.asarray(predict(np.ones(len(keys), dtype=bool))), 0
    at = np.minimum(np.searchsorted(memo.keys, keys), len(memo.keys) - 1)
    hit = memo.keys[at] == keys
    if hit.all():
        return memo.values[at], len(keys)
    fresh = np.asarray(predict(~hit))
    dtype = object if object in (fresh.dtype, memo.values.dtype) else np.result_type(
        fresh, memo.values)
    out = np.empty(len(keys), dtype=dtype)
    out[hit] = memo.values[at[hit]]
    out[~hit] = fresh
    return out, int(hit.sum())


def _forget_deleted(store: ModelStore, name: str, folder: Path) -> None:
    """Remove the files of versions that are no longer committed, and what a write cut
    short left (one run writes at a time: the training lock)."""
    committed = set(store.committed(name))
    for path in folder.glob("v*.npz"):
        if path.stem not in committed:
            path.unlink(missing_ok=True)
    for tmp in folder.glob(".v*.tmp"):
        tmp.unlink(missing_ok=True)
