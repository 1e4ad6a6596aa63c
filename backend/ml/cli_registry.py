"""The command line's registry commands: `models` (and `models --at`), `verify`,
`rollback`, `restore`, `sign`, `replay` and `backups`; `cli.build_parser` adds them.

Like every command in `backend.ml.cli`: imports inside the function, a problem the user
can fix raised as `CommandError` (one line, exit 2), exit 1 when what was checked is
broken or differs. `cli` imports this module when it builds its parser, not before.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from backend.ml.cli import EXIT_FAILED_RUN, CommandError
from backend.ml.config import Settings
from backend.ml.fleet.specs import MODEL_NAMES


def add_commands(sub: Any) -> None:
    """The registry's subcommands on the CLI's subparsers."""
    p = sub.add_parser("models", help=f"the {len(MODEL_NAMES)} models: production version, "
                                      "score, state")
    p.add_argument("--json", action="store_true")
    p.add_argument("--at", metavar="TIME", help="the version serving at this ISO 8601 time "
                   "with its offset (from the audit)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("verify", help="check the audit chain and every stored version's "
                                      "signature and file hash; exit 1 when broken")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("rollback", help="production back to the previous or a named version")
    p.add_argument("name")
    p.add_argument("--to", help="a version id such as v0003 (default: previous)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("restore", help="restore a backup set (name under LOGS_DIR or a path)")
    p.add_argument("backup")
    p.add_argument("--trust-existing", action="store_true",
                   help="also restore versions saved before models were signed")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("sign", help="sign stored versions with the model signing key (after "
                                    "an upgrade, or a key rotation)")
    p.add_argument("--trust-existing", action="store_true",
                   help="sign every version whose model file matches its recorded SHA-256")
    p.add_argument("--previous-key-file", type=Path,
                   help="re-sign versions that verify under the key in this file")
    p.set_defaults(func=cmd_sign)

    p = sub.add_parser("replay", help="fit a stored version again from the database's rows "
                                      "and compare model hashes; exit 1 when it differs")
    p.add_argument("name")
    p.add_argument("version", help="a version id such as v0003")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("backups", help="list backup sets")
    p.set_defaults(func=cmd_backups)


def aware_time(text: str, option: str) -> datetime:
    """An ISO 8601 time that names its offset; CommandError otherwise."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise CommandError(f"{option} {text!r}: give an ISO 8601 time with its offset, such "
                           "as 2026-01-31T02:00:00+05:30 or 2026-01-31T02:00:00Z")
    return moment


def models_at(args: argparse.Namespace, settings: Settings) -> int:
    """Which version served each model at `--at`, from the audit."""
    from backend.ml.runs.services import Services

    at = aware_time(args.at, "--at")
    store = Services.from_settings(settings).store
    rows = [{"model": name, **(store.production_at(name, at) or {})} for name in MODEL_NAMES]
    if not any(r.get("to") for r in rows):
        raise CommandError(f"no model had a production version at {at.isoformat()}: that "
                           "is before the first promotion")
    if args.json:
        print(json.dumps([{"model": r["model"], "production": r.get("to"),
                           "since": r.get("at"), "action": r.get("action"),
                           "reason": r.get("reason")} for r in rows], indent=2))
        return 0
    print(f"production at {at.isoformat()}")
    print(f"{'model':<25}{'production':<12}since")
    for r in rows:
        print(f"{r['model']:<25}{r.get('to') or '-':<12}{r.get('at') or '-'}")
    return 0


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    """Every model's production version, score and health state (the one health function
    the API, the dashboard and /metrics show); with `--at`, the version serving then."""
    from backend.ml.monitoring.health import read_fleet
    from backend.ml.runs.services import Services

    if getattr(args, "at", None) is not None:
        return models_at(args, settings)
    services = Services.from_settings(settings)
    rows = []
    for status in read_fleet(services.store, settings, on_recover=services.report_recovery):
        meta = status.production or {}
        rows.append({"model": status.name, "group": status.group, "metric": status.metric,
                     "production": meta.get("version"), "score": meta.get("score"),
                     "threshold": status.threshold, "trained_at": meta.get("created_at"),
                     "state": status.health.state.value, "state_reason": status.health.reason})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<25}{'group':<15}{'production':<12}{'score':>8}{'threshold':>10}  state")
    for r in rows:
        score = f"{r['score']:.3f}" if r["score"] is not None else "-"
        print(f"{r['model']:<25}{r['group']:<15}{r['production'] or '-':<12}{score:>8}"
              f"{r['threshold']:>10.2f}  {r['state']}")
    return 0


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from backend.ml.fleet import specs
    from backend.ml.runs.services import Services

    specs.get_spec(args.name)
    entry = Services.from_settings(settings).store.rollback(args.name, to=args.to, actor="cli")
    print(f"{args.name}: production {entry['from']} -> {entry['to']}")
    return 0


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    from backend.ml.registry.backups import restore_backup
    from backend.ml.runs.services import Services

    path = Path(args.backup)
    if not path.is_absolute():
        path = settings.LOGS_DIR / path
    store = Services.from_settings(settings).store
    restored = restore_backup(settings.MODELS_DIR, path, key=settings.BACKUP_ENCRYPTION_KEY,
                              actor="cli", store=store, trust_unsigned=args.trust_existing)
    print(f"restored {path.name}: " + json.dumps(restored, default=str))
    return 0


def cmd_sign(args: argparse.Namespace, settings: Settings) -> int:
    from backend.ml.registry.rotation import resign_audit, sign_versions
    from backend.ml.registry.signing import signer_from_file
    from backend.ml.registry.store import StoreError
    from backend.ml.runs.services import Services

    if not (args.trust_existing or args.previous_key_file):
        raise CommandError("sign needs --trust-existing (sign every version whose files are "
                           "whole, vouching for them) or --previous-key-file FILE (re-sign "
                           "the versions that verify under an old key)")
    previous = signer_from_file(args.previous_key_file) if args.previous_key_file else None
    store = Services.from_settings(settings).store
    report = sign_versions(store, trust_existing=args.trust_existing, previous=previous)
    for row in report:
        print(f"{row['name']} {row['version']}: {row['result']}")
    signed = sum(1 for row in report if row["result"].startswith("signed"))
    left = sum(1 for row in report if row["result"].startswith("left"))
    print(f"signed {signed}, left unsigned {left}, of {len(report)} version(s); key "
          f"{store.signer.key_id} ({store.signer.source})")
    if previous is not None:
        try:
            entries = resign_audit(store, previous)
        except StoreError as exc:
            raise CommandError(str(exc)) from None
        print(f"audit: signed {entries} entr{'y' if entries == 1 else 'ies'} again with key "
              f"{store.signer.key_id}")
    return 0 if left == 0 else EXIT_FAILED_RUN


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    """The audit chain and every stored version: one line per problem, then a summary;
    exit 1 when anything is broken."""
    from backend.ml.registry.verify import verify_store
    from backend.ml.runs.services import Services

    report = verify_store(Services.from_settings(settings).store)
    for problem in report.problems:
        print(problem.line())
    print(report.summary())
    return 0 if report.ok else EXIT_FAILED_RUN


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Fit a stored version again from the database's rows; exit 0 when the model hash is
    the same (or, for an older version, its data fingerprint), 1 when it differs."""
    from backend.ml.data import loading
    from backend.ml.fleet import specs
    from backend.ml.runs.services import Services
    from backend.ml.training.replay import replay

    specs.get_spec(args.name)  # an unknown name lists the valid ones before any work
    engine = loading.open_readonly(settings.DATABASE_URL)
    outcome = replay(Services.from_settings(settings).store, engine, args.name, args.version)
    if args.json:
        print(json.dumps(outcome.as_dict(), indent=2))
    else:
        print(f"{outcome.name} {outcome.version}: {outcome.verdict}")
        print(f"  model hash  stored {outcome.stored_hash or '-'}  replayed "
              f"{outcome.replayed_hash or '-'}")
        window = " .. ".join(str(t) for t in outcome.window) or "-"
        print(f"  window      {window}")
        print(f"  rows        stored {outcome.rows.get('stored')}  now {outcome.rows.get('now')}")
        for line in outcome.changes:
            print(f"  changed     {line}")
        if outcome.note:
            print(f"  note        {outcome.note}")
    return 0 if outcome.same else EXIT_FAILED_RUN


def cmd_backups(args: argparse.Namespace, settings: Settings) -> int:
    from backend.ml.registry.backups import list_backups

    for backup in list_backups(settings.LOGS_DIR):
        print(json.dumps(backup, default=str))
    return 0
