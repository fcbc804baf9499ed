"""This node's WireGuard key pair, made on first start and kept in the state folder."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

KEY_FILE = "wireguard.key"


@dataclass(frozen=True)
class KeyPair:
    private_path: Path  # `wg` reads the key from here; it never travels
    public: str  # base64, as in the WIREGUARD mechanism


def _raw(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def public_of(private_b64: str) -> str:
    key = X25519PrivateKey.from_private_bytes(base64.b64decode(private_b64))
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def load_or_create(state_dir: Path) -> KeyPair:
    """The node's key pair; created with mode 0600 the first time, the same ever after."""
    path = state_dir / KEY_FILE
    if not path.exists():
        encoded = base64.b64encode(_raw(X25519PrivateKey.generate())).decode()
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(encoded + "\n")
        os.replace(path.with_suffix(".tmp"), path)
    os.chmod(path, 0o600)
    return KeyPair(path, public_of(path.read_text().strip()))
