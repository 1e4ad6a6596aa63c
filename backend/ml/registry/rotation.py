"""A key rotation: everything signed with the previous key signed again with the current
one, the versions (`sign_versions`) and then the audit chain (`resign_audit`), so `verify`
passes and the service's hourly check stops raising `audit_chain_broken`.

A version is signed again when it verifies under `previous`, or, with `trust_existing`,
when its model file matches its recorded SHA-256 (the operator vouches for the files on
disk). The audit must verify first, each entry under the key its `key_id` names (the
previous key, or the current one for entries appended since the key changed); a single
broken line leaves it as it is, and the error names it. Then every chained entry gets the
current key's `key_id` and `mac` and a `prev` over the new lines, and the file is replaced
atomically under the registry's lock, with a new head in `registry.json`. The unsigned
prefix of the release before the chain is kept byte for byte, and what each entry says
(time, model, versions, reason, actor) is unchanged.

Deliberately not done: vouching for an audit that does not verify under either key (a lost
previous key included; `trust_existing` covers version files only). `verify` names what is
wrong; accepting it is the operator's call, not this command's.
"""

from __future__ import annotations

import json
import logging

from backend.ml.fleet.specs import MODEL_NAMES
from backend.ml.fsio import atomic_write_json
from backend.ml.registry.aliases import entry_mac, first_prev, is_chained, line_hash
from backend.ml.registry.signing import Signer
from backend.ml.registry.store import ModelStore, StoreError, model_format, sha256_hex
from backend.ml.registry.verify import verify_chain

logger = logging.getLogger(__name__)


def sign_versions(store: ModelStore, *, trust_existing: bool = False,
                  previous: Signer | None = None) -> list[dict[str, str]]:
    """Sign every committed version that the current key does not verify (see the module
    docstring). One row per version looked at: name, version and what happened."""
    report: list[dict[str, str]] = []
    with store.locked("sign versions"):
        for name in MODEL_NAMES:
            for version in store.committed(name):
                report.append({"name": name, "version": version, "result": _sign_one(
                    store, name, version, trust_existing, previous)})
    signed = sum(1 for row in report if row["result"].startswith("signed"))
    logger.warning("signed %d version(s) with key %s", signed, store.signer.key_id)
    return report


def _sign_one(store: ModelStore, name: str, version: str, trust_existing: bool,
              previous: Signer | None) -> str:
    signer = store.signer
    try:
        meta = store.metadata(name, version)
    except StoreError as exc:
        return f"left unsigned: {exc}"
    if signer.verifies(meta):
        return "already signed with the current key"
    if previous is not None and previous.verifies(meta):
        how = f"signed (was signed with key {previous.key_id})"
    elif trust_existing:
        how = "signed (trusted as found)"
    else:
        return "left unsigned: not signed with the previous key given"
    path = store.model_path(name, version, model_format(meta))
    try:
        digest = sha256_hex(path.read_bytes())
    except OSError as exc:
        return f"left unsigned: {path} cannot be read: {exc.strerror or exc}"
    if digest != meta["sha256"] or (meta.get("name"), meta.get("version")) not in (
            (name, version), (None, None)):
        return f"left unsigned: {path} does not match its metadata"
    atomic_write_json(store.meta_path(name, version),
                      signer.signed({**meta, "name": name, "version": version,
                                     "format": model_format(meta)}))
    return how


def resign_audit(store: ModelStore, previous: Signer) -> int:
    """Sign the audit's chained entries with the store's current key; how many were signed
    again (0: nothing to do). StoreError, naming the first broken line, when the chain does
    not verify under `previous` and the current key."""
    signer, book = store.signer, store.book
    with store.locked("sign the audit"):
        try:
            data = book.audit_path.read_bytes()
        except FileNotFoundError:
            return 0
        report = verify_chain(book.audit_path, signer, previous_key=previous)
        if not report.ok:
            raise StoreError(f"the audit was left as it is: {report.problems[0].line()}; "
                             "run `python -m backend.ml verify` for every problem")
        lines = data[:data.rfind(b"\n") + 1].split(b"\n")[:-1]  # a torn last line goes
        chained = [json.loads(line) for line in lines if is_chained(line)]
        if all(entry.get("key_id") == signer.key_id for entry in chained):
            return 0
        out: list[bytes] = []
        prev: str | None = None
        for line in lines:
            if not is_chained(line):  # blank, or the unsigned prefix (verified: only first)
                out.append(line)
                continue
            if prev is None:
                prev = first_prev(b"".join(kept + b"\n" for kept in out))
            entry = {k: v for k, v in json.loads(line).items() if k != "mac"}
            entry.update(prev=prev, key_id=signer.key_id)
            entry["mac"] = entry_mac(signer, entry)
            out.append(json.dumps(entry).encode("utf-8"))
            prev = line_hash(out[-1])
        book.replace_audit(b"".join(line + b"\n" for line in out), signer)
    return len(chained)
