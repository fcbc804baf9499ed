"""The path of a registry call, on upstream's wire: JSON in gRPC metadata `path`
(`{"index": N, "path_segments": [{"token": JWT}, ...]}`; Go's encoding/json also writes and
reads the field names `Index` and `PathSegments`), the caller's own token in
`nsm-client-token`. Each hop puts the caller's token into the caller's segment and its own
after it (upstream's registry updatepath). Pure, but for signing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nsm_common.identity.source import IdentitySource
from nsm_common.tokens import MAX_TOKEN_LENGTH, claims, sign, subject, to_metadata

PATH_KEY = "path"
MAX_PATH_BYTES = 64 * 1024
MAX_SEGMENTS = 32
TOKEN_LIFETIME = 60.0  # seconds a registry call's token is good for


class PathError(ValueError):
    """A `path` metadata value that cannot be used, with what is wrong."""


@dataclass
class RegistryPath:
    index: int = 0
    tokens: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"index": self.index, "path_segments": [{"token": t} for t in self.tokens]})

    def segments(self, upto: int | None = None) -> list[dict[str, Any]]:
        """As the policies see them (upstream's shape, and each token's claims decoded)."""
        chosen = self.tokens if upto is None else self.tokens[: upto + 1]
        out: list[dict[str, Any]] = []
        for token in chosen:
            found = claims(token)
            out.append({"token": token, "claims": found} if found is not None else {"token": token})
        return out

    def ids(self, upto: int) -> list[str]:
        """The signers of the segments up to index UPTO: who the call came through, in order."""
        return [subject(t) for t in self.tokens[: upto + 1]]


def _field(doc: dict[str, Any], name: str) -> Any:
    """Go's encoding/json matches field names case-insensitively; upstream writes `Index`."""
    for key, value in doc.items():
        if key.replace("_", "").lower() == name.replace("_", "").lower():
            return value
    return None


def read_path(metadata: Iterable[tuple[str, str | bytes]] | None) -> RegistryPath | None:
    """The path a caller sent (the last `path` value, as upstream reads it); None when it sent
    none. Raises PathError for one that is not upstream's JSON or is too big."""
    values = [v for k, v in metadata or () if k == PATH_KEY]
    if not values:
        return None
    raw = values[-1]
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    if len(text) > MAX_PATH_BYTES:
        raise PathError(f"metadata `path` is {len(text)} bytes; at most {MAX_PATH_BYTES}")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PathError(f"metadata `path` is not JSON (or nested too deep): {exc}") from None
    if not isinstance(doc, dict):
        raise PathError("metadata `path` is not a JSON object")
    index = _field(doc, "index") or 0
    segments = _field(doc, "path_segments") or []
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise PathError(f"metadata `path`: index {index!r} is not a whole number ≥ 0")
    if not isinstance(segments, list) or len(segments) > MAX_SEGMENTS:
        raise PathError(f"metadata `path`: path_segments must be a list of at most {MAX_SEGMENTS}")
    tokens = []
    for seg in segments:
        token = _field(seg, "token") if isinstance(seg, dict) else None
        token = token if isinstance(token, str) else ""
        if len(token) > MAX_TOKEN_LENGTH:
            raise PathError("metadata `path`: a token is too long to be a path token")
        tokens.append(token)
    if tokens and index >= len(tokens):
        raise PathError(f"metadata `path`: index {index} is past its {len(tokens)} segments")
    return RegistryPath(index, tokens)


def enter(path: RegistryPath, peer_token: str, own_token: str) -> int:
    """Move PATH to this hop: the caller's segment gets PEER_TOKEN, this hop's OWN_TOKEN
    (appended, or replaced on a refresh). Returns this hop's index."""
    if not path.tokens:
        path.tokens = [peer_token, own_token]
        path.index = 1
        return 1
    path.tokens[path.index] = peer_token
    path.index += 1
    if path.index < len(path.tokens):
        path.tokens[path.index] = own_token
    else:
        path.tokens.append(own_token)
    return path.index


def call_metadata(
    identity: IdentitySource | None, audience: str, path: RegistryPath | None = None
) -> tuple[tuple[str, str | bytes], ...]:
    """What a caller sends with a registry call: its token for AUDIENCE and, where it is
    passing a call on, the path so far (this hop's segment last). Empty without an identity."""
    if identity is None:
        return ()
    signed = sign(identity.current(), audience, time.time() + TOKEN_LIFETIME)
    out = to_metadata(signed.token, signed.expires)
    if path is not None:
        path.tokens[path.index] = signed.token
        out = (*out, (PATH_KEY, path.to_json()))
    return out
