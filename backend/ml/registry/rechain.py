"""The audit under a new signing key: after `sign --previous-key-file` re-signs the
versions, `resign_audit` signs the audit chain again with the current key, so `verify`
passes and the service's hourly check stops raising `audit_chain_broken`.

The whole chain must verify first, each entry under the key its `key_id` names (the
previous key, or the current one for entries appended since the key changed); a single
broken line leaves the audit as it is, and the error names it. Then every chained entry
gets the current key's `key_id` and `mac` and a `prev` over the new lines, and the file is
replaced atomically under the registry's lock, with a new head in `registry.json`. The
unsigned prefix of the release before the chain is kept byte for byte, and what each entry
says (time, model, versions, reason, actor) is unchanged.

Deliberately not done: re-signing an audit that does not verify under either key (a lost
previous key included). `verify` names what is wrong; vouching for it is the operator's
call, not this command's.
"""

from __future__ import annotations

import json

from backend.ml.registry.aliases import entry_mac, first_prev, is_chained, line_hash
from backend.ml.registry.signing import Signer
from backend.ml.registry.store import ModelStore, StoreError
from backend.ml.registry.verify import verify_chain


def resign_audit(store: ModelStore, previous: Signer) -> int:
    """Sign the audit's chained entries with the store's current key; how many were signed
    again (0: nothing to do). StoreError, naming the first broken line, when the chain does
    not verify under `previous` and the current key."""
    signer, book = store.signer, store.book
    with book.update():
        try:
            data = book.audit_path.read_bytes()
        except FileNotFoundError:
            return 0
        report = verify_chain(book.audit_path, signer, previous_key=previous)
        if not report.ok:
            raise StoreError(f"the audit was left as it is: {report.problems[0].line()}; "
                             "run `python -m backend.ml verify` for every problem")
        lines = data[:data.rfind(b"\n") + 1].split(b"\n")[:-1]  # a torn last line goes
        if not any(is_chained(line) for line in lines) or all(
                json.loads(line).get("key_id") == signer.key_id
                for line in lines if is_chained(line)):
            return 0
        out: list[bytes] = []
        prev: str | None = None
        signed = 0
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
            signed += 1
        book.replace_audit(b"".join(line + b"\n" for line in out), signer)
    return signed
