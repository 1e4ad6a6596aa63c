"""The audit chain: every alias move chained and signed, `verify`, and production at any
time replayed from the audit."""

from __future__ import annotations

import argparse
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from sklearn.pipeline import Pipeline

from backend.ml import cli, cli_registry
from backend.ml.config import Settings
from backend.ml.registry.aliases import GENESIS, AliasMove, first_prev, line_hash, replay
from backend.ml.registry.rotation import sign_versions
from backend.ml.registry.signing import signer_for, signer_from_file
from backend.ml.registry.store import ModelStore
from backend.ml.registry.verify import check_audit_chain, verify_chain, verify_store
from tests.ml.test_store import NAME, fit, result

T1 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
T2 = T1 + timedelta(days=1)
T3 = T2 + timedelta(hours=5)


@pytest.fixture(scope="module")
def estimators() -> tuple[Pipeline, Pipeline]:
    return fit(100.0), fit(-100.0)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(MODELS_DIR=tmp_path / "models", LOGS_DIR=tmp_path / "logs",
                    MODEL_SIGNING_KEY="audit-chain-test-key-0123456789abcdef")


@pytest.fixture
def store(settings: Settings, estimators: tuple[Pipeline, Pipeline]) -> ModelStore:
    """v0001 promoted at T1, v0002 at T2, rolled back to v0001 at T3."""
    ms = ModelStore(settings.MODELS_DIR, signer=signer_for(settings))
    for i, estimator in enumerate(estimators):
        ms.save(result(estimator), run_id=f"r{i}")
    for moment, act in ((T1, lambda: ms.promote(NAME, "v0001", reason="first", actor="cli")),
                        (T2, lambda: ms.promote(NAME, "v0002", reason="better", actor="cli")),
                        (T3, lambda: ms.rollback(NAME, actor="api", reason="bad week"))):
        with time_machine.travel(moment, tick=False):
            act()
    return ms


def audit_lines(ms: ModelStore) -> list[str]:
    return ms.book.audit_path.read_text().splitlines()


def write_lines(ms: ModelStore, lines: list[str]) -> None:
    ms.book.audit_path.write_text("".join(line + "\n" for line in lines))


def test_each_move_is_chained_and_signed(store: ModelStore) -> None:
    entries = [json.loads(line) for line in audit_lines(store)]
    assert [e["to"] for e in entries] == ["v0001", "v0002", "v0001"]
    assert entries[0]["prev"] == GENESIS
    assert [e["prev"] for e in entries[1:]] == [line_hash(line.encode())
                                               for line in audit_lines(store)[:-1]]
    assert all(e["key_id"] == store.signer.key_id and len(e["mac"]) == 64 for e in entries)
    report = verify_store(store)
    assert report.ok and (report.entries, report.legacy, report.versions) == (3, 0, 2)
    # readers see moves, not the chain
    assert set(store.audit(1)[0]) == {"at", "model", "from", "to", "action", "reason", "actor"}


def test_production_at_any_time_replays_the_audit(store: ModelStore) -> None:
    def at(moment: datetime) -> str | None:
        move = store.production_at(NAME, moment)
        return None if move is None else str(move["to"])

    assert at(T1 - timedelta(seconds=1)) is None
    assert [at(T1), at(T2 - timedelta(seconds=1)), at(T2), at(T3 - timedelta(microseconds=1)),
            at(T3), at(T3 + timedelta(days=30))] == [
        "v0001", "v0001", "v0002", "v0002", "v0001", "v0001"]
    ist = T2.astimezone(datetime.fromisoformat("2026-01-01T00:00+05:30").tzinfo)
    assert at(ist) == "v0002"
    assert store.production_at("delay_prediction", T3) is None


@pytest.mark.parametrize("damage", ["edit", "reorder", "remove", "insert_unsigned"])
def test_damage_is_named_and_production_still_serves(store: ModelStore, damage: str) -> None:
    lines = audit_lines(store)
    if damage == "edit":
        entry = json.loads(lines[1])
        entry["reason"] = "nobody asked"
        lines[1] = json.dumps(entry)
    elif damage == "reorder":
        lines[1], lines[2] = lines[2], lines[1]
    elif damage == "remove":
        del lines[1]
    else:
        lines.insert(2, json.dumps({"at": T2.isoformat(), "model": NAME, "from": "v0002",
                                    "to": "v0001", "action": "promote", "actor": "cli"}))
    write_lines(store, lines)
    report = verify_store(store)
    assert not report.ok
    first = report.problems[0]
    assert first.where.startswith(f"audit.jsonl line {3 if damage == 'insert_unsigned' else 2}"
                                  f" ({NAME} ")
    assert report.summary().startswith(f"{len(report.problems)} problem(s)")
    alerts: list[tuple[str, str, str]] = []
    check_audit_chain(store, lambda *a: alerts.append(a))
    assert [(level, kind) for level, kind, _ in alerts] == [("critical", "audit_chain_broken")]
    assert "line" in alerts[0][2]
    estimator, meta = store.load(NAME)  # the registry still serves
    assert meta["version"] == "v0001" and store.aliases(NAME)["production"] == "v0001"


def test_a_changed_version_file_is_named(store: ModelStore) -> None:
    meta_path = store.meta_path(NAME, "v0002")
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "score": 0.99}))
    report = verify_store(store)
    assert [p.where for p in report.problems] == [f"{NAME} v0002"]


def test_entries_of_the_release_before_the_chain_are_its_unsigned_prefix(
        settings: Settings, estimators: tuple[Pipeline, Pipeline]) -> None:
    ms = ModelStore(settings.MODELS_DIR, signer=signer_for(settings))
    ms.save(result(estimators[0]), run_id="r0")
    legacy = [{"at": "2026-01-01T00:00:00+00:00", "model": "delay_prediction", "from": None,
               "to": "v0001", "action": "promote", "reason": "old", "actor": "scheduler"},
              {"at": "2026-01-02T00:00:00+00:00", "model": "delay_prediction",
               "from": "v0001", "to": "v0002", "action": "promote", "reason": "old",
               "actor": "scheduler"}]
    ms.models_dir.mkdir(parents=True, exist_ok=True)
    write_lines(ms, [json.dumps(e) for e in legacy])
    ms.promote(NAME, "v0001", reason="first chained", actor="cli")
    report = verify_chain(ms.book.audit_path, ms.signer)
    assert report.ok and (report.entries, report.legacy) == (3, 2)
    prefix = "".join(line + "\n" for line in audit_lines(ms)[:2]).encode()
    assert json.loads(audit_lines(ms)[2])["prev"] == first_prev(prefix)
    assert ms.production_at("delay_prediction", T1) is not None  # still read

    lines = audit_lines(ms)
    lines[0] = lines[0].replace('"old"', '"rewritten"')  # the prefix is covered too
    write_lines(ms, lines)
    [problem] = verify_chain(ms.book.audit_path, ms.signer).problems
    assert problem.where.startswith("audit.jsonl line 3")


def test_dropping_the_newest_entries_is_named_by_the_registry_head(store: ModelStore) -> None:
    """A chain's prefix is a valid chain: only the head registry.json keeps shows the loss."""
    lines = audit_lines(store)
    write_lines(store, lines[:-1])  # the rollback at T3 removed; its alias move stays
    assert verify_chain(store.book.audit_path, store.signer).ok  # the chain alone cannot see
    report = verify_store(store)
    assert [p.where for p in report.problems][:1] == ["audit.jsonl"]
    assert "newest entries were removed" in report.problems[0].message
    alerts: list[tuple[str, str, str]] = []
    check_audit_chain(store, lambda *a: alerts.append(a))
    assert [kind for _, kind, _ in alerts] == ["audit_chain_broken"]


def test_an_audit_past_its_head_is_a_crash_before_the_registry_write(
        store: ModelStore) -> None:
    """The append lands before registry.json: a crash between leaves the audit longer."""
    head = store.book.read().audit_head
    assert head is not None and head.size == store.book.audit_path.stat().st_size
    store.book._append([AliasMove(at=T3.isoformat(), model=NAME, to="v0002",
                                  action="promote", actor="cli")])
    # Only the alias the crash left unmoved shows; the head is reached.
    assert [p.where for p in verify_store(store).problems] == [f"registry.json ({NAME})"]


def test_a_forged_head_is_named(store: ModelStore) -> None:
    path = store.book.path
    registry = json.loads(path.read_text())
    registry["audit_head"]["size"] -= 1
    path.write_text(json.dumps(registry))
    [problem] = verify_store(store).problems
    assert problem.where == "registry.json (audit head)" and "changed" in problem.message


def test_a_torn_last_line_is_cut_before_the_next_entry(store: ModelStore) -> None:
    with store.book.audit_path.open("ab") as f:
        f.write(b'{"at": "2026-03-0')  # a crash mid-append
    assert verify_chain(store.book.audit_path, store.signer).ok  # ignored, as readers do
    store.rollback(NAME, actor="cli")
    assert verify_chain(store.book.audit_path, store.signer).ok
    assert [m["to"] for m in store.audit(None)][:1] == ["v0002"]


def test_cli_verify_and_models_at(store: ModelStore, settings: Settings,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_registry.cmd_verify(argparse.Namespace(), settings) == 0
    assert "all well" in capsys.readouterr().out

    args = argparse.Namespace(at=(T2 + timedelta(minutes=1)).isoformat(), json=False)
    assert cli_registry.cmd_models(args, settings) == 0
    out = capsys.readouterr().out
    assert any(line.split()[:2] == [NAME, "v0002"] for line in out.splitlines())
    with pytest.raises(cli.CommandError, match="before the first promotion"):
        cli_registry.cmd_models(argparse.Namespace(at="2020-01-01T00:00:00Z", json=False), settings)
    with pytest.raises(cli.CommandError, match="offset"):
        cli_registry.cmd_models(argparse.Namespace(at="2026-03-03T00:00:00", json=False), settings)

    lines = audit_lines(store)
    lines[0] = lines[0].replace('"first"', '"second"')
    write_lines(store, lines)
    assert cli_registry.cmd_verify(argparse.Namespace(), settings) == cli.EXIT_FAILED_RUN
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"audit.jsonl line 1 ({NAME} promote at {T1.isoformat()})")
    assert out[-1].startswith("2 problem(s)")  # its mac, and the next line's prev


def test_concurrent_promotions_keep_one_production_and_the_chain(
        settings: Settings, estimators: tuple[Pipeline, Pipeline]) -> None:
    ms = ModelStore(settings.MODELS_DIR, signer=signer_for(settings))
    for i, estimator in enumerate(estimators):
        ms.save(result(estimator), run_id=f"r{i}")
    ms.promote(NAME, "v0001", reason="start", actor="cli")
    stop = threading.Event()
    seen: list[str | None] = []
    errors: list[BaseException] = []

    def read() -> None:
        reader = ModelStore(settings.MODELS_DIR, signer=signer_for(settings))
        while not stop.is_set():
            seen.append(reader.book.read().models[NAME].production)

    def move(i: int) -> None:
        try:
            own = ModelStore(settings.MODELS_DIR, signer=signer_for(settings))
            if i % 2:
                own.promote_many({NAME: "v0002"}, reason=f"t{i}", actor="scheduler")
            else:
                own.promote_many({NAME: "v0001"}, reason=f"t{i}", actor="api",
                                 action="rollback")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=move, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    reader.join()
    assert not errors, errors
    assert seen and set(seen) <= {"v0001", "v0002"}
    report = verify_store(ms)
    assert report.ok, report.problems
    moves = [AliasMove.model_validate(m) for m in reversed(ms.audit(None))]
    assert report.entries == len(moves) >= 2
    assert replay(moves)[NAME].production == ms.aliases(NAME)["production"]


def test_a_registry_alias_the_audit_never_moved_is_named(store: ModelStore) -> None:
    registry = store.models_dir / "registry.json"
    document = json.loads(registry.read_text())
    document["models"][NAME]["production"] = "v0002"  # the audit's moves end at v0001
    registry.write_text(json.dumps(document))
    report = verify_store(store)
    assert [p.where for p in report.problems] == [f"registry.json ({NAME})"]
    assert "the audit's moves end at v0001" in report.problems[0].message


def test_the_parsed_audit_follows_appends_and_edits(store: ModelStore) -> None:
    """`at=` reads a cached parse of the audit: an append is seen, and so is an edit that
    keeps the file's size (the cache checks the bytes it parsed before reusing them)."""
    assert store.production_at(NAME, T3)["to"] == "v0001"  # parsed and cached
    later = T3 + timedelta(hours=1)
    with time_machine.travel(later, tick=False):
        store.promote(NAME, "v0002", reason="again", actor="cli")
    assert store.production_at(NAME, later)["to"] == "v0002"  # the appended line
    assert [m["reason"] for m in store.audit(name=NAME)][:2] == ["again", "bad week"]
    lines = audit_lines(store)
    lines[0] = lines[0].replace('"reason": "first"', '"reason": "FIRST"')
    write_lines(store, lines)  # same size, new bytes
    assert store.audit(name=NAME)[-1]["reason"] == "FIRST"
    assert not verify_chain(store.book.audit_path, store.signer).ok


def test_a_key_rotation_signs_the_audit_again_and_verify_passes(
        store: ModelStore, settings: Settings, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    old_key = tmp_path / "old.key"
    old_key.write_text(str(settings.MODEL_SIGNING_KEY))
    rotated = settings.model_copy(update={"MODEL_SIGNING_KEY": "rotated-key-" + "7" * 40})
    moves_before = store.audit(None)
    new_store = ModelStore(rotated.MODELS_DIR, signer=signer_for(rotated))
    sign_versions(new_store, previous=signer_from_file(old_key))  # the versions only, as before
    new_store.promote(NAME, "v0002", reason="after the rotation", actor="cli")  # new key
    report = verify_store(new_store)
    assert not report.ok and "not the current key" in report.problems[0].message

    args = argparse.Namespace(trust_existing=False, previous_key_file=old_key)
    assert cli_registry.cmd_sign(args, rotated) == 0
    assert "audit: signed 4 entries again" in capsys.readouterr().out
    assert verify_store(new_store).ok
    assert new_store.audit(None)[1:] == moves_before  # what each entry says is unchanged
    assert cli_registry.cmd_sign(args, rotated) == 0  # again: nothing left to do
    assert "audit: signed 0 entries" in capsys.readouterr().out


def test_a_rotation_leaves_a_broken_audit_as_it_is(
        store: ModelStore, settings: Settings, tmp_path: Path) -> None:
    old_key = tmp_path / "old.key"
    old_key.write_text(str(settings.MODEL_SIGNING_KEY))
    lines = audit_lines(store)
    lines[0] = lines[0].replace('"first"', '"edited"')
    write_lines(store, lines)
    before = store.book.audit_path.read_bytes()
    rotated = settings.model_copy(update={"MODEL_SIGNING_KEY": "rotated-key-" + "7" * 40})
    args = argparse.Namespace(trust_existing=False, previous_key_file=old_key)
    with pytest.raises(cli.CommandError, match="audit was left as it is: audit.jsonl line 1"):
        cli_registry.cmd_sign(args, rotated)
    assert store.book.audit_path.read_bytes() == before
