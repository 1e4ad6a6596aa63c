"""Model versions on disk: files, signatures, alias moves and retention.

    <name>/v0001.skops   the fitted Pipeline (skops; `.joblib` where it cannot), written first
    <name>/v0001.json    its metadata: format, the model file's SHA-256 and a signature over
                         all of it (signing.py); written last, the commit point
    registry.json        which version serves, and audit.jsonl, every alias move, a signed
                         hash chain (aliases.py; checked by verify.py)

A model file without its `.json` is a crash mid-save: readers ignore it, retention deletes
it. Numbers only go up (`last_version` is the highest ever issued), so a version id in the
history or a backup names one fit forever; committed files are never rewritten (only
`sign` re-signs metadata, by replacing it), so backups may hard-link them. A load checks the
signature, then the SHA-256, then reads the bytes with the spec's allow-list (formats.py):
no byte of an unsigned or changed file reaches a deserializer. Every writer holds
`.registry.lock`.

    StoreError                   refused or impossible; nothing changed; names the path
     +-- UnknownVersionError     no such committed version
     +-- NoProductionModelError  nothing promoted yet
     +-- ChecksumError           a version's files are missing or changed since saved
          +-- SignatureError     unsigned, signed with another key, or changed since signed
     +-- backups.BackupError     a backup cannot be made or restored
    specs.UnknownModelError      (a KeyError) not a model name; lists the valid ones

Not done here: the promotion gate (`promotion.py`). Readers never move aliases: when
production fails verification, `load_serving` alerts and serves a fallback; a person or the
next run decides. skops, joblib and scikit-learn are imported only to load or save a model,
so listing versions stays cheap.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import platform
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.ml.fleet.specs import MODEL_NAMES, get_spec
from backend.ml.fsio import LockTimeout, atomic_write_bytes, atomic_write_json, read_json
from backend.ml.registry import formats
from backend.ml.registry.aliases import (
    ACTIONS,
    ACTORS,
    VERSION_RE,
    AliasBook,
    AliasMove,
    ModelAliases,
    Registry,
    now_iso,
    serving_at,
)
from backend.ml.registry.signing import Signer, SigningKeyError, default_signer
from backend.ml.statefile import Recovery

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from backend.ml.training.trainer import TrainResult

logger = logging.getLogger(__name__)

Meta = dict[str, Any]
AlertFn = Callable[[str, str, str], None]  # (level, kind, message)
RESULT_FIELDS = ("group", "metric", "score", "baseline", "threshold", "passed", "strategy",
                 "params", "data_start", "data_end", "holdout_start", "rows_train",
                 "rows_holdout", "fit_seconds", "duration_seconds", "feature_stats", "lift",
                 "data_fingerprint", "training_data", "model_hash", "performance_estimator")


class StoreError(Exception):
    """The model store refused or could not do something; nothing was changed."""


class UnknownVersionError(StoreError):
    """No committed version by that id."""


class NoProductionModelError(StoreError):
    """The model has no production version yet."""


class ChecksumError(StoreError):
    """A version's files are missing or differ from what was saved."""


class SignatureError(ChecksumError):
    """A version is unsigned, signed with another key, or changed since it was signed."""


def sha256_hex(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def library_versions() -> dict[str, str]:
    import joblib
    import sklearn
    import skops

    return {"python": platform.python_version(), "scikit-learn": sklearn.__version__,
            "joblib": joblib.__version__, "skops": skops.__version__}


def version_id(number: int) -> str:
    return f"v{number:04d}"


ALL_SUFFIXES = (".json", *formats.SUFFIXES.values())


def model_format(meta: Mapping[str, Any]) -> str:
    """The format (file suffix) a version's metadata names; ChecksumError if unknown."""
    fmt = meta.get("format", formats.LEGACY_FORMAT)
    if fmt not in formats.SUFFIXES:
        raise ChecksumError(f"{meta.get('name')} {meta.get('version')}: unknown model format "
                            f"{fmt!r} in its metadata")
    return str(fmt)


class ModelStore:
    """Versions and aliases of every model under `models_dir`; safe across processes.

    `versioning=False` keeps only production: older versions go once a new one is promoted
    and a rejected candidate goes at once. Otherwise retention keeps production, previous
    and the newest `keep_candidates` others.
    """

    def __init__(self, models_dir: Path, *, versioning: bool = True, keep_candidates: int = 3,
                 lock_timeout: float = 60.0, signer: Signer | None = None,
                 on_recover: Callable[[Recovery], None] | None = None,
                 keep_loaded: bool = False) -> None:
        self.models_dir = Path(models_dir)
        self._signer = signer
        self.versioning = versioning
        self.keep_candidates = max(0, keep_candidates)
        self.book = AliasBook(self.models_dir, numbers=lambda n: self._numbers(n, ALL_SUFFIXES),
                              model_names=lambda: MODEL_NAMES, signer=lambda: self.signer,
                              versioning=versioning, on_recover=on_recover,
                              lock_timeout=lock_timeout)
        self.registry_path = self.book.path
        # With `keep_loaded`, the last loaded model of each name by its verified SHA-256:
        # deserialising (skops) is 95% of a check's reading, and a long-lived store (a
        # backtest's) loads the same files day after day. Off by default: the web process
        # keeps its own cache of served versions, and a second copy of each would only
        # cost memory; the service's check and runs are new processes each time.
        self._loaded: dict[str, tuple[str, Pipeline]] | None = {} if keep_loaded else None

    @property
    def signer(self) -> Signer:
        """The key versions are signed and checked with (the settings' one by default).
        StoreError naming the setting when there is no usable key."""
        if self._signer is None:
            try:
                self._signer = default_signer()
            except SigningKeyError as exc:
                raise StoreError(str(exc)) from exc
        return self._signer

    # ---- reading ----------------------------------------------------------------------------

    def meta_path(self, name: str, version: str) -> Path:
        """A version's metadata file; checks the names, not the files."""
        get_spec(name)  # also keeps a hostile name away from the file system
        if not VERSION_RE.match(version):
            raise UnknownVersionError(f"{name}: {version!r} is not a version id (like v0001)")
        return self.models_dir / name / f"{version}.json"

    def model_path(self, name: str, version: str, fmt: str) -> Path:
        return self.meta_path(name, version).with_suffix(formats.SUFFIXES[fmt])

    def paths(self, name: str, version: str) -> tuple[Path, Path]:
        """(model file, metadata file) of a committed version, by its recorded format."""
        meta = self.metadata(name, version)
        return self.model_path(name, version, model_format(meta)), self.meta_path(name, version)

    def _numbers(self, name: str, suffixes: tuple[str, ...]) -> list[int]:
        get_spec(name)
        folder = self.models_dir / name
        found = {int(m.group(1)) for p in (folder.iterdir() if folder.is_dir() else ())
                 if p.suffix in suffixes and (m := VERSION_RE.match(p.stem))}
        return sorted(found)

    def committed(self, name: str) -> list[str]:
        """Version ids with metadata (the commit point), oldest first."""
        return [version_id(n) for n in self._numbers(name, (".json",))]

    def metadata(self, name: str, version: str) -> Meta:
        """A version's metadata, without checking its model file or signature."""
        meta_path = self.meta_path(name, version)
        if not meta_path.exists():
            raise UnknownVersionError(f"{name} has no version {version} ({meta_path} not found)")
        try:
            meta = read_json(meta_path)
        except (OSError, ValueError) as exc:
            raise ChecksumError(f"{name} {version}: metadata {meta_path} is unreadable: "
                                f"{exc}") from exc
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
            raise ChecksumError(f"{name} {version}: metadata {meta_path} has no sha256")
        return meta

    def _verified(self, name: str, version: str) -> tuple[Meta, bytes]:
        meta = self.metadata(name, version)
        problem = self.signer.problem(meta)
        if problem is None and (meta.get("name"), meta.get("version")) != (name, version):
            problem = (f"is signed as {meta.get('name')} {meta.get('version')}: a version "
                       f"copied from elsewhere; refusing to load it")
        if problem is not None:
            raise SignatureError(f"{name} {version}: {problem}")
        path = self.model_path(name, version, model_format(meta))
        try:
            payload = path.read_bytes()
        except OSError as exc:
            raise ChecksumError(f"{name} {version}: model file {path} cannot be read: "
                                f"{exc.strerror or exc}") from exc
        digest = sha256_hex(payload)
        if digest != meta["sha256"]:
            raise ChecksumError(
                f"{name} {version}: {path} has SHA-256 {digest[:16]}..., its metadata says "
                f"{meta['sha256'][:16]}...; refusing to load a file changed since saved")
        return meta, payload

    def verify(self, name: str, version: str) -> Meta:
        """The metadata of a version that is signed and whose model file matches it."""
        return self._verified(name, version)[0]

    def load(self, name: str, version: str | None = None) -> tuple[Pipeline, Meta]:
        """A verified, loaded version (None: production) and its metadata. The file is
        verified on every call; with `keep_loaded`, a copy of the last object loaded for
        `name` is returned when the verified digest is the same."""
        if version is None:
            version = self.aliases(name)["production"]
            if version is None:
                raise NoProductionModelError(
                    f"{name} has no production version yet (registry {self.registry_path})")
        meta, payload = self._verified(name, version)
        cached = None if self._loaded is None else self._loaded.get(name)
        if cached is not None and cached[0] == meta["sha256"]:  # verified again just now
            return copy.deepcopy(cached[1]), meta  # a copy: a caller may change its own
        path = self.model_path(name, version, model_format(meta))
        from sklearn.pipeline import Pipeline

        try:
            estimator = formats.load(get_spec(name), model_format(meta), payload)
        except formats.FormatError as exc:  # verified bytes from other library versions
            raise StoreError(f"{name} {version}: {path} verifies but {exc}") from exc
        if not isinstance(estimator, Pipeline):
            raise StoreError(f"{name} {version}: {path} holds a {type(estimator).__name__}")
        if self._loaded is not None:
            self._loaded[name] = (meta["sha256"], copy.deepcopy(estimator))
        return estimator, meta

    def load_serving(self, name: str,
                     on_alert: AlertFn | None = None) -> tuple[Pipeline, Meta] | None:
        """Production if it verifies; else, with one alert, previous, then the newest version
        that verifies (`served_as` in the metadata says which). None when nothing verifies
        or nothing was ever promoted."""
        aliases: dict[str, str | None] = {"production": None, "previous": None}
        try:
            aliases = self.aliases(name)
            if aliases["production"] is None:
                return None
            estimator, meta = self.load(name, aliases["production"])
            return estimator, {**meta, "served_as": "production"}
        except StoreError as exc:
            problem = f"{name} production {aliases['production']} cannot be served: {exc}"
            kind = ("signature_invalid" if isinstance(exc, SignatureError)
                    else "checksum_mismatch")
        found: tuple[Pipeline, Meta] | None = None
        for version in dict.fromkeys([aliases["previous"], *reversed(self.committed(name))]):
            if version is None or version == aliases["production"]:
                continue
            with contextlib.suppress(StoreError):
                estimator, meta = self.load(name, version)
                as_ = "previous" if version == aliases["previous"] else "fallback"
                found = estimator, {**meta, "served_as": as_}
                break
        served = (f"serving {found[1]['version']} ({found[1]['served_as']}) instead" if found
                  else "no version verifies: nothing is served")
        logger.error("%s; %s", problem, served)
        if on_alert is not None:
            on_alert("critical", kind, f"{problem}; {served}")
        return found

    def aliases(self, name: str) -> dict[str, str | None]:
        get_spec(name)
        slot = self.book.aliases(name)
        return {"production": slot.production, "previous": slot.previous}

    def production_meta(self, name: str) -> Meta | None:
        version = self.aliases(name)["production"]
        return None if version is None else self.metadata(name, version)

    def versions(self, name: str) -> list[Meta]:
        """Every committed version, newest first, with its `state` (production, previous or
        candidate); an unreadable one has an `error` instead of its metadata."""
        states = {v: state for state, v in self.aliases(name).items() if v is not None}
        out: list[Meta] = []
        for version in reversed(self.committed(name)):
            try:
                meta = self.metadata(name, version)
            except StoreError as exc:
                meta = {"name": name, "version": version, "error": str(exc)}
            out.append({**meta, "state": states.get(version, "candidate")})
        return out

    def audit(self, limit: int | None = 100, *, name: str | None = None) -> list[Meta]:
        """Alias moves, newest first."""
        entries = [e.as_dict() for e in reversed(self.book.audit())
                   if name is None or e.model == name]
        return entries if limit is None else entries[:limit]

    def production_at(self, name: str, at: datetime) -> Meta | None:
        """The audit entry of the move that made the version serving at `at` production
        (the moves replayed up to `at`); None before the model's first promotion."""
        get_spec(name)
        move = serving_at(self.book.audit(), name, at)
        return None if move is None else move.as_dict()

    # ---- writing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, purpose: str) -> Iterator[Registry]:
        """The registry under its lock, written back at the end (StoreError naming the path
        when busy or not writable)."""
        try:
            with self.book.update() as registry:
                yield registry
        except LockTimeout as exc:
            raise StoreError(f"model store {self.models_dir} is busy ({purpose}): {exc}") from exc
        except OSError as exc:
            raise StoreError(f"model store {self.models_dir} cannot {purpose}: "
                             f"{exc.filename or self.models_dir}: {exc.strerror or exc}") from exc

    def check_writable(self) -> None:
        """StoreError naming the path unless this process can write the store."""
        with self.locked("check it is writable"):
            pass

    def save(self, result: TrainResult, *, run_id: str) -> Meta:
        """Store a successful fit as the next version: a candidate until promoted."""
        if not result.ok or result.estimator is None:
            raise StoreError(f"{result.name}: only a successful fit is saved (status "
                             f"{result.status}: {result.error or 'no estimator'})")
        fmt, payload = formats.dump(get_spec(result.name), result.estimator)
        summary = result.summary()
        meta = {"run_id": run_id, "created_at": datetime.now(UTC).isoformat(),
                **{key: summary[key] for key in RESULT_FIELDS}, "libraries": library_versions(),
                "format": fmt}
        return self.import_version(result.name, payload, meta)

    def import_version(self, name: str, payload: bytes, meta: Mapping[str, Any]) -> Meta:
        """Write model bytes (in `meta["format"]`) and their metadata, signed, as the next
        version; the stored metadata. Signing vouches for the bytes: callers pass only bytes
        they made or verified."""
        get_spec(name)
        fmt = model_format(meta)
        signer = self.signer
        with self.locked(f"save a version of {name}") as registry:
            slot = registry.models.setdefault(name, ModelAliases())
            number = max([slot.last_version, *self._numbers(name, ALL_SUFFIXES)]) + 1
            meta_path = self.meta_path(name, version_id(number))
            model_path = self.model_path(name, version_id(number), fmt)
            stored = signer.signed({**meta, "name": name, "version": version_id(number),
                                    "format": fmt, "sha256": sha256_hex(payload),
                                    "size_bytes": len(payload)})
            atomic_write_bytes(model_path, payload)
            try:
                atomic_write_json(meta_path, stored)
            except BaseException:
                model_path.unlink(missing_ok=True)
                raise
            slot.last_version = number  # a crash before this still leaves the files
        logger.info("saved %s %s (%d bytes)", name, stored["version"], len(payload))
        return stored

    def promote(self, name: str, version: str, *, reason: str, actor: str,
                action: str = "promote") -> Meta:
        """Make `version` production (production becomes previous); the audit entry."""
        moved = self.promote_many({name: version}, reason=reason, actor=actor, action=action)
        if not moved:
            raise StoreError(f"{name} {version} is already production; nothing changed")
        return moved[0]

    def promote_many(self, targets: Mapping[str, str], *, reason: str, actor: str,
                     action: str = "promote") -> list[Meta]:
        """Verify every target, then move the aliases in one registry write (a target that
        is already production is left as is). The audit entries."""
        if action not in ACTIONS or actor not in ACTORS:
            raise StoreError(f"action must be one of {ACTIONS} and actor one of {ACTORS}, "
                             f"not {action!r} and {actor!r}")
        for name, version in targets.items():
            self.paths(name, version)
        with self.locked(f"{action} {', '.join(targets)}") as registry:
            for name, version in targets.items():
                self._verified(name, version)
            moves: list[AliasMove] = []
            for name, version in targets.items():
                slot = registry.models.setdefault(name, ModelAliases())
                if slot.production != version:
                    moves.append(AliasMove(at=now_iso(), model=name, from_=slot.production,
                                           to=version, action=action, reason=reason,
                                           actor=actor))
                    slot.previous = slot.production if self.versioning else None
                    slot.production = version
            self.book.record(moves)
        for name in targets:  # after the registry is written: retention reads it
            self.prune(name)
        for m in moves:
            logger.info("%s %s: %s -> %s by %s (%s)", action, m.model, m.from_, m.to, actor,
                        reason)
        return [m.as_dict() for m in moves]

    def rollback(self, name: str, *, to: str | None = None, actor: str,
                 reason: str | None = None) -> Meta:
        """Production back to previous, or to version `to`. Refuses an unknown model or
        version, or one failing its checksum, changing nothing. The audit entry."""
        aliases = self.aliases(name)
        target = to or aliases["previous"]
        if target is None:
            raise StoreError(f"{name} has no previous version to roll back to; name one of "
                             f"{self.committed(name)}")
        why = reason or f"rollback from {aliases['production']} to {target}"
        return self.promote(name, target, reason=why, actor=actor, action="rollback")

    def reject(self, name: str, version: str) -> list[Path]:
        """A candidate the gate turned down: deleted now without versioning, else left for
        retention to age out. The files deleted."""
        with self.locked(f"reject {name} {version}") as registry:
            slot = registry.models.get(name) or ModelAliases()
            if version in (slot.production, slot.previous):
                raise StoreError(f"{name} {version} is production or previous; not rejected")
            deleted = [] if self.versioning else self._delete(name, version)
            return deleted + self._retain(name, registry)

    def prune(self, name: str) -> list[Path]:
        """Apply retention to one model now; the files deleted."""
        with self.locked(f"prune {name}") as registry:
            return self._retain(name, registry)

    def _retain(self, name: str, registry: Registry) -> list[Path]:
        slot = registry.models.get(name) or ModelAliases()
        keep = {slot.production, slot.previous} - {None}
        others = [v for v in reversed(self.committed(name)) if v not in keep]
        if self.versioning:
            keep.update(others[:self.keep_candidates])
        elif not slot.production:
            keep.update(others)  # production unknown: never empty a model's folder
        deleted: list[Path] = []
        folder = self.models_dir / name
        try:
            for number in self._numbers(name, ALL_SUFFIXES):  # orphans too
                if version_id(number) not in keep:
                    deleted += self._delete(name, version_id(number))
            for tmp in folder.glob(".v*.tmp") if folder.is_dir() else ():
                tmp.unlink(missing_ok=True)  # left by a crashed write; we hold the lock
                deleted.append(tmp)
        except OSError as exc:  # the aliases already moved: a failed clean-up must not undo that
            logger.warning("retention of %s stopped at %s: %s", name, exc.filename, exc)
        return deleted

    def _delete(self, name: str, version: str) -> list[Path]:
        meta_path = self.meta_path(name, version)
        models = [meta_path.with_suffix(suffix) for suffix in formats.SUFFIXES.values()]
        deleted = [p for p in (meta_path, *models) if p.exists()]
        for path in deleted:  # metadata first: a crash in between leaves an orphan
            path.unlink()
        if deleted:
            logger.info("deleted %s %s", name, version)
        return deleted
