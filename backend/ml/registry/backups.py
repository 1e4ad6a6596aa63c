"""Recovery of the model store: backup sets of production, their restore, and the training
history rebuilt from version metadata.

A backup is `LOGS_DIR/backup_YYYYMMDD_HHMMSS/` (UTC; `_2`, `_3`... when two fall in one
second) holding each model's production files and a `manifest.json`:

    {"created_at", "encrypted", "models": {name: {"version", "sha256", "json_sha256",
     "size_bytes", "files": {"model": ..., "meta": ...}}}, "skipped": {name: why}}

It is built in a hidden temp folder and renamed into place, so a folder with the final
name is always complete. Plain files are hard links to the store's (committed store files
are never rewritten, so a link is a snapshot), or copies across file systems. With a
Fernet key every file is encrypted (`<name>_v0003.joblib.enc`, never a link) and the
manifest's checksums are of the plaintext: a restore checks what it will load.

A restore verifies every file of the set first (checksums, and each version's signature
under the current signing key: the store would sign what it imports) and writes nothing
until all pass. A set made before versions were signed restores only when the operator says
they trust it (`trust_unsigned`). A backed
up version still intact in the store under its id is re-used as is; otherwise the bytes
come back as a new version (`restored_from` in its metadata), because an id, once issued,
never names other bytes. Then production moves to them in one registry write (audit
action "restore"). `prune_backups` deletes whole sets by the time in their folder name and
never touches the models folder, where production and previous live.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

from cryptography.fernet import Fernet, InvalidToken

from backend.ml.fleet.specs import SPECS, UnknownModelError, get_spec
from backend.ml.fsio import atomic_write_bytes, atomic_write_json, ensure_dir, read_json
from backend.ml.registry.store import Meta, ModelStore, StoreError, sha256_hex

logger = logging.getLogger(__name__)

BACKUP_RE = re.compile(r"^backup_(\d{8}_\d{6})(?:_\d+)?$")
TEMP_RE = re.compile(r"^\.backup_(\d{8}_\d{6})(?:_\d+)?\.tmp-")
STAMP = "%Y%m%d_%H%M%S"
MANIFEST = "manifest.json"
STALE_TEMP = timedelta(days=1)  # a temp set older than this is a crashed backup


class BackupError(StoreError):
    """A backup cannot be made or restored; the store is as it was."""


def _utc(now: datetime | None) -> datetime:
    moment = now or datetime.now(UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _fernet(key: str) -> Fernet:
    try:
        return Fernet(key)
    except (ValueError, TypeError) as exc:
        raise BackupError("the backup encryption key is not a Fernet key (32 url-safe "
                          "base64-encoded bytes; make one with Fernet.generate_key())") from exc


def _stamp(name: str, pattern: re.Pattern[str]) -> datetime | None:
    match = pattern.match(name)
    if match is None:
        return None
    return datetime.strptime(match.group(1), STAMP).replace(tzinfo=UTC)


def backup_production(models_dir: Path, logs_dir: Path, names: Iterable[str], *,
                      key: str | None = None, now: datetime | None = None,
                      store: ModelStore | None = None) -> Path | None:
    """Back up the current production files of `names` (the set a run is about to replace).

    A production version that fails verification is left out (listed under `skipped`, and
    logged): a copy of a bad file restores nothing. None when there is nothing to back up.
    """
    store, fernet = store or ModelStore(models_dir), _fernet(key) if key else None
    picked: dict[str, Meta] = {}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            version = store.aliases(name)["production"]
            if version is not None:
                picked[name] = store.verify(name, version)
        except StoreError as exc:
            skipped[name] = str(exc)
            logger.warning("backup leaves out %s: %s", name, exc)
    if not picked:
        return None
    moment = _utc(now)
    final = Path(logs_dir) / f"backup_{moment:{STAMP}}"
    for n in range(2, 1000):
        if not final.exists():
            break
        final = final.with_name(f"backup_{moment:{STAMP}}_{n}")
    temp = final.with_name(f".{final.name}.tmp-{uuid4().hex[:8]}")
    try:
        ensure_dir(temp)
        models: dict[str, Any] = {}
        for name, meta in picked.items():
            sources = dict(zip(("model", "meta"), store.paths(name, meta["version"]),
                               strict=True))
            blobs = {kind: source.read_bytes() for kind, source in sources.items()}
            if sha256_hex(blobs["model"]) != meta["sha256"]:
                raise BackupError(f"{sources['model']} changed while being backed up")
            files = {kind: f"{name}_{source.name}" + (".enc" if fernet else "")
                     for kind, source in sources.items()}
            for kind, source in sources.items():
                if fernet is not None:
                    atomic_write_bytes(temp / files[kind], fernet.encrypt(blobs[kind]))
                else:
                    _link_or_copy(source, temp / files[kind], blobs[kind])
            models[name] = {"version": meta["version"], "sha256": meta["sha256"],
                            "json_sha256": sha256_hex(blobs["meta"]),
                            "size_bytes": meta.get("size_bytes"), "files": files}
        atomic_write_json(temp / MANIFEST, {"created_at": moment.isoformat(),
                                            "encrypted": fernet is not None,
                                            "models": models, "skipped": skipped})
        os.rename(temp, final)
    except OSError as exc:
        raise BackupError(f"cannot write backup {final}: {exc}") from exc
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    logger.info("backed up %d production model(s) to %s%s", len(models), final,
                " (encrypted)" if fernet else "")
    return final


def _link_or_copy(source: Path, target: Path, payload: bytes) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: a copy does as well
        atomic_write_bytes(target, payload)


def _read_member(backup_dir: Path, file_name: object, fernet: Fernet | None) -> bytes:
    if not isinstance(file_name, str) or Path(file_name).name != file_name:
        raise BackupError(f"manifest of {backup_dir} names a file outside it: {file_name!r}")
    try:
        payload = (backup_dir / file_name).read_bytes()
        return fernet.decrypt(payload) if fernet is not None else payload
    except OSError as exc:
        raise BackupError(f"backup file {backup_dir / file_name} cannot be read: "
                          f"{exc.strerror or exc}") from exc
    except InvalidToken as exc:
        raise BackupError(f"backup file {backup_dir / file_name} does not decrypt with the "
                          "key given: wrong key, or the file was altered") from exc


def restore_backup(models_dir: Path, backup_dir: Path, *, key: str | None, actor: str,
                   versioning: bool = True, store: ModelStore | None = None,
                   trust_unsigned: bool = False) -> dict[str, Any]:
    """Put a backup set back into production, after verifying all of it (see module doc).

    BackupError, changing nothing, for a missing or malformed set, an encrypted set without
    its key or with another, any checksum that does not match, or a version whose signature
    the store's key does not verify (unsigned ones pass with `trust_unsigned`).
    """
    store = store or ModelStore(models_dir, versioning=versioning)
    backup_dir = Path(backup_dir)
    if not (backup_dir / MANIFEST).is_file():
        raise BackupError(f"no backup at {backup_dir} ({MANIFEST} not found)")
    try:
        manifest = read_json(backup_dir / MANIFEST)
        entries: dict[str, Any] = manifest["models"]
        encrypted = bool(manifest["encrypted"])
        if not isinstance(entries, dict):
            raise TypeError("'models' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"manifest of backup {backup_dir} is unreadable: {exc}") from exc
    if encrypted and not key:
        raise BackupError(f"backup {backup_dir} is encrypted; give the key it was made with "
                          "(BACKUP_ENCRYPTION_KEY)")
    fernet = _fernet(key) if encrypted and key else None
    verified: dict[str, tuple[bytes, Meta]] = {}
    for name, entry in entries.items():
        try:
            get_spec(name)
            payload = _read_member(backup_dir, entry["files"]["model"], fernet)
            meta_bytes = _read_member(backup_dir, entry["files"]["meta"], fernet)
            meta = json.loads(meta_bytes)
            intact = (sha256_hex(payload) == entry["sha256"] == meta["sha256"]
                      and sha256_hex(meta_bytes) == entry["json_sha256"]
                      and meta["name"] == name and meta["version"] == entry["version"])
        except (UnknownModelError, KeyError, TypeError, ValueError) as exc:
            raise BackupError(f"backup {backup_dir}: entry {name!r} is malformed: "
                              f"{exc}") from exc
        if not intact:
            raise BackupError(f"backup {backup_dir}: {name} {entry['version']} fails its "
                              "checksum; nothing restored")
        problem = store.signer.problem(meta)
        if problem is not None and not (trust_unsigned and "signature" not in meta):
            hint = (" (a set made before versions were signed: restore it with "
                    "--trust-existing if you trust it)" if "signature" not in meta else "")
            raise BackupError(f"backup {backup_dir}: {name} {entry['version']} {problem}"
                              f"{hint}; nothing restored")
        verified[name] = payload, meta
    if not verified:
        raise BackupError(f"backup {backup_dir} holds no models")
    restored: dict[str, dict[str, Any]] = {}
    for name, (payload, meta) in verified.items():
        version = meta["version"]
        try:
            reuse = store.verify(name, version)["sha256"] == meta["sha256"]
        except StoreError:
            reuse = False
        if not reuse:
            version = store.import_version(name, payload, {
                **meta, "restored_from": {"backup": backup_dir.name, "version": version},
                "restored_at": datetime.now(UTC).isoformat()})["version"]
        restored[name] = {"backup_version": meta["version"], "version": version,
                          "written": not reuse}
    moves = store.promote_many({n: r["version"] for n, r in restored.items()},
                               reason=f"restore from {backup_dir.name}", actor=actor,
                               action="restore")
    return {"backup": str(backup_dir), "models": restored, "audit": moves}


def list_backups(logs_dir: Path) -> list[dict[str, Any]]:
    """Complete backup sets, newest first, with what each holds."""
    found = []
    for path in Path(logs_dir).iterdir() if Path(logs_dir).is_dir() else ():
        stamp = _stamp(path.name, BACKUP_RE)
        if stamp is None or not path.is_dir():
            continue
        item: dict[str, Any] = {"name": path.name, "path": str(path),
                                "created_at": stamp.isoformat()}
        try:
            manifest = read_json(path / MANIFEST)
            item.update(encrypted=manifest["encrypted"], skipped=manifest.get("skipped", {}),
                        models={n: e["version"] for n, e in manifest["models"].items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            item["error"] = f"manifest unreadable: {exc}"
        found.append(item)
    return sorted(found, key=lambda b: str(b["name"]), reverse=True)


def prune_backups(logs_dir: Path, retention_days: int, *,
                  now: datetime | None = None) -> list[Path]:
    """Delete backup sets older than `retention_days` by their folder name's time, and temp
    sets of crashed backups; the paths deleted. `retention_days` <= 0 keeps every set."""
    if retention_days <= 0 or not Path(logs_dir).is_dir():
        return []
    moment = _utc(now)
    removed = []
    for path in Path(logs_dir).iterdir():
        stamp = _stamp(path.name, BACKUP_RE)
        temp_stamp = _stamp(path.name, TEMP_RE)
        if path.is_dir() and (
                (stamp is not None and stamp < moment - timedelta(days=retention_days))
                or (temp_stamp is not None and temp_stamp < moment - STALE_TEMP)):
            shutil.rmtree(path)
            removed.append(path)
    if removed:
        logger.info("deleted %d backup set(s) older than %d days", len(removed), retention_days)
    return sorted(removed)


def rebuild_history(models_dir: Path) -> dict[str, Any]:
    """Trainings and model versions as far as the versions' metadata tells, for a lost
    history: one training per run id, at its earliest version's time. Fits that failed left
    no version, so they are missing; durations are unknown (null)."""
    store = ModelStore(models_dir)
    runs: dict[str, list[Meta]] = {}
    versions: dict[str, list[Meta]] = {}
    for name in SPECS:
        for version in store.committed(name):
            try:
                meta = store.metadata(name, version)
            except StoreError:
                continue
            runs.setdefault(str(meta.get("run_id")), []).append(meta)
            versions.setdefault(name, []).append({"timestamp": meta.get("created_at"), **{
                k: meta.get(k) for k in ("version", "run_id", "metric", "score", "baseline",
                                         "threshold", "passed", "strategy", "rows_train",
                                         "rows_holdout", "data_start", "data_end", "sha256")}})
    trainings: list[dict[str, Any]] = []
    for run_id, metas in runs.items():
        details: dict[str, dict[str, Any]] = {}
        for meta in metas:  # oldest first: a model fitted twice in a run keeps its last
            details.setdefault(f"{SPECS[meta['name']].group}_models", {})[meta["name"]] = {
                k: meta.get(k) for k in ("version", "metric", "score", "baseline", "threshold",
                                         "passed", "rows_train", "rows_holdout", "strategy")}
        results = [r for group in details.values() for r in group.values()]
        scores = [float(r["score"]) for r in results if isinstance(r["score"], int | float)]
        good = sum(1 for r in results if r["passed"] is True)
        trainings.append({
            "run_id": run_id, "timestamp": min(str(m.get("created_at")) for m in metas),
            "trigger": None, "status": "success" if good == len(results) else "partial",
            "models_trained": len(results), "successful_models": good,
            "failed_models": len(results) - good,
            "avg_accuracy": round(sum(scores) / len(scores), 4) if scores else None,
            "duration_seconds": None, "errors": [], "model_details": details, "rebuilt": True})
    trainings.sort(key=lambda t: str(t["timestamp"]))
    return {"trainings": trainings, "model_versions": versions}
