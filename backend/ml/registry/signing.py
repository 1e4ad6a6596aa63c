"""Who wrote a model version: HMAC-SHA256 signatures under the model signing key.

A checksum kept beside a file proves the file is whole, not who wrote it: anyone who can
write `v0003.skops` can write `v0003.json` too. So a version's metadata carries
`signature`, an HMAC-SHA256 under a secret key of the metadata itself (its canonical JSON
without the signature), and the metadata holds the model file's SHA-256, its format, the
model's name and the version id. A signed `v0003` of one model therefore cannot be copied
over another model or another version. The store checks the signature, then the SHA-256,
before a model file's bytes reach any deserializer.

The key is MODEL_SIGNING_KEY when set (at least 32 characters), else the content of
MODEL_SIGNING_KEY_FILE, created on first use with 32 random bytes (hex) and owner-only
permissions. It lives outside MODELS_DIR so that whoever can write the models folder (or a
copy of it) does not hold the key too. `key_id` (8 hex characters of a hash of the key)
names a key in messages and metadata without revealing it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.ml.fsio import create_exclusive

if TYPE_CHECKING:
    from backend.ml.config import Settings

logger = logging.getLogger(__name__)

MIN_KEY_CHARS = 32
SIGN_COMMAND = "python -m backend.ml sign --trust-existing"


class SigningKeyError(Exception):
    """The signing key cannot be had: too short, or its file unreadable or unwritable."""


def canonical(meta: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: the metadata without its signature, keys sorted."""
    body = {k: v for k, v in meta.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      default=str).encode("ascii")


@dataclass(frozen=True)
class Signer:
    """Signs and checks version metadata with one key; `source` says where the key is."""

    key: bytes = field(repr=False)
    source: str

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"model-signing-key-id\0" + self.key).hexdigest()[:8]

    def signed(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        """`meta` with this key's id and a signature over all of it."""
        body = {k: v for k, v in meta.items() if k != "signature"}
        body["key_id"] = self.key_id
        return {**body, "signature": self._mac(body)}

    def problem(self, meta: Mapping[str, Any]) -> str | None:
        """None when `meta` carries a valid signature under this key, else what is wrong,
        phrased to follow "<name> <version> ..." and naming the way out."""
        signature = meta.get("signature")
        if not isinstance(signature, str) or not signature:
            return (f"is not signed (stored before models were signed, or its signature was "
                    f"removed): refusing to load it. If you trust the files on disk, sign "
                    f"them once with `{SIGN_COMMAND}`")
        key_id = meta.get("key_id")
        if key_id != self.key_id:
            return (f"is signed with key {key_id!r}, not with the current key "
                    f"{self.key_id!r} ({self.source}): was MODEL_SIGNING_KEY (or its file) "
                    f"changed? Set the key it was signed with, or re-sign the versions "
                    f"signed with the old key with `python -m backend.ml sign "
                    f"--previous-key-file FILE`")
        if not hmac.compare_digest(signature, self._mac(meta)):
            return ("has a signature that does not match its metadata: the version was "
                    "changed outside the service; refusing to load it")
        return None

    def verifies(self, meta: Mapping[str, Any]) -> bool:
        return self.problem(meta) is None

    def _mac(self, meta: Mapping[str, Any]) -> str:
        return hmac.new(self.key, canonical(meta), hashlib.sha256).hexdigest()


def signer_for(settings: Settings) -> Signer:
    """The signer of these settings: MODEL_SIGNING_KEY, else the key file (made if absent)."""
    return _signer(settings.MODEL_SIGNING_KEY, settings.MODEL_SIGNING_KEY_FILE)


def default_signer() -> Signer:
    """The signer of the environment's settings, for a store built without one."""
    from backend.ml.config import Settings

    return signer_for(Settings())


def signer_from_file(path: Path) -> Signer:
    """A signer whose key is the content of an existing file (an old key, for re-signing)."""
    return Signer(_read_key_file(path), str(path))


@lru_cache(maxsize=8)
def _signer(key: str | None, key_file: Path) -> Signer:
    if key:
        if len(key) < MIN_KEY_CHARS:
            raise SigningKeyError(f"MODEL_SIGNING_KEY is {len(key)} characters long; it "
                                  f"needs at least {MIN_KEY_CHARS} (for example the output "
                                  f"of `python -c 'import secrets; print(secrets.token_hex(32))'`)")
        return Signer(key.encode("utf-8"), "MODEL_SIGNING_KEY")
    if not key_file.exists():
        try:
            made = create_exclusive(key_file, (secrets.token_hex(32) + "\n").encode("ascii"),
                                    mode=0o600)
        except OSError as exc:
            raise SigningKeyError(f"cannot create the model signing key file {key_file}: "
                                  f"{exc.strerror or exc}; set MODEL_SIGNING_KEY or "
                                  f"MODEL_SIGNING_KEY_FILE") from exc
        if made:
            logger.warning("generated a new model signing key in %s (owner-only). Keep it "
                           "and back it up apart from the models: every model version is "
                           "refused without the key it was signed with", key_file)
    return Signer(_read_key_file(key_file), str(key_file))


def _read_key_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SigningKeyError(f"cannot read the model signing key file {path}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from exc
    if len(text) < MIN_KEY_CHARS:
        raise SigningKeyError(f"the model signing key file {path} holds {len(text)} "
                              f"characters; a key needs at least {MIN_KEY_CHARS}")
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and os.name == "posix":
        logger.warning("the model signing key file %s can be read by others than its owner "
                       "(mode %o); `chmod 600` it", path, stat.S_IMODE(mode))
    return text.encode("utf-8")
