"""Path tokens: the ES256 JWT each hop signs for its own path segment, and upstream's wire
for it.

A caller signs `sub` = its SPIFFE ID, `aud` = [the server's SPIFFE ID], `exp` = its segment's
`expires` (capped by its certificate), and sends the token in gRPC metadata
`nsm-client-token` with its expiry in `nsm-client-token-expires` (RFC 3339 with
nanoseconds, as Go's `time.RFC3339Nano` writes it); the server puts both into the caller's
segment. Checks live in the policies (`nsm_common/policy`); this module signs, reads and
verifies one token.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nsm_common.identity.svid import Svid

TOKEN_KEY = "nsm-client-token"
EXPIRES_KEY = "nsm-client-token-expires"
ALGORITHM = "ES256"
# A token is a few hundred bytes; anything far larger is not one of ours and is refused
# before it is parsed.
MAX_TOKEN_LENGTH = 8192
MIN_LIFETIME = 30.0  # seconds: the least a token is signed for

# Go's time.RFC3339Nano: up to nine fraction digits (trailing zeros dropped), Z or ±hh:mm.
_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})")


class TokenError(ValueError):
    """A token or its metadata that cannot be used, with what is wrong."""


def format_expires(seconds: float) -> str:
    """`seconds` since the epoch as Go's RFC3339Nano in UTC (what upstream sends)."""
    whole = int(seconds // 1)
    nanos = round((seconds - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    stamp = datetime.datetime.fromtimestamp(whole, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f".{nanos:09d}".rstrip("0").rstrip(".")
    return f"{stamp}{fraction}Z"


def parse_expires(text: str) -> float:
    """RFC 3339 with up to nanoseconds, as seconds since the epoch; raises TokenError."""
    found = _RFC3339.fullmatch(text)
    if found is None:
        raise TokenError(f"{EXPIRES_KEY} {text[:64]!r} is not an RFC 3339 time")
    year, month, day, hour, minute, second, fraction, zone = found.groups()
    try:
        base = datetime.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                                 tzinfo=datetime.UTC)  # fmt: skip
    except ValueError as exc:
        raise TokenError(f"{EXPIRES_KEY} {text!r}: {exc}") from None
    offset = 0
    if zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    nanos = int((fraction or "").ljust(9, "0"))
    return base.timestamp() - offset + nanos / 1e9


@dataclass(frozen=True)
class Presented:
    """A token a caller sent with a call, and the expiry it gave for it."""

    token: str
    expires: float


def from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> Presented | None:
    """The caller's token from gRPC metadata; None when it sent none. Raises TokenError for
    metadata that is there but unusable (not exactly one value of each key, a bad time)."""
    tokens: list[str] = []
    expires: list[str] = []
    for key, value in metadata or ():
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        if key == TOKEN_KEY:
            tokens.append(text)
        elif key == EXPIRES_KEY:
            expires.append(text)
    if not tokens and not expires:
        return None
    if len(tokens) != 1 or len(expires) != 1:
        raise TokenError(f"a call carries exactly one {TOKEN_KEY} and one {EXPIRES_KEY} "
                         f"(this one: {len(tokens)} and {len(expires)})")  # fmt: skip
    if len(tokens[0]) > MAX_TOKEN_LENGTH:
        raise TokenError(f"{TOKEN_KEY} is {len(tokens[0])} bytes long; a path token is at most {MAX_TOKEN_LENGTH}")
    return Presented(tokens[0], parse_expires(expires[0]))


def to_metadata(token: str, expires: float) -> tuple[tuple[str, str | bytes], ...]:
    """The two metadata entries a caller sends its token in."""
    return (TOKEN_KEY, token), (EXPIRES_KEY, format_expires(expires))


@dataclass(frozen=True)
class Signed:
    token: str
    expires: float


def sign(svid: Svid, audience: str | None, expires: float) -> Signed:
    """A token for this hop's segment: sub = SVID's ID, aud = [AUDIENCE] (none: no aud),
    exp = EXPIRES in whole seconds (JWT NumericDate), never past the SVID's own end. A
    segment whose expiry has passed or is close (the Close of a connection about to expire)
    still gets a token good for MIN_LIFETIME, long enough for the call it goes with."""
    exp = int(min(max(expires, time.time() + MIN_LIFETIME), svid.not_after.timestamp()))
    claims: dict[str, Any] = {"sub": str(svid.spiffe_id), "exp": exp}
    if audience:
        claims["aud"] = [audience]
    return Signed(jwt.encode(claims, _key(svid.key_pem), algorithm=ALGORITHM), float(exp))


@functools.lru_cache(maxsize=8)
def _key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """The signing key, read once per identity (reading a PEM costs as much as a signature)."""
    key = serialization.load_pem_private_key(pem, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TokenError("the identity's key is not an EC key; path tokens are ES256")
    return key


def claims(token: str) -> dict[str, Any] | None:
    """The token's claims, signature not checked (who the token says signed it); None when
    it is not a JWT (three base64url parts, the first two JSON objects)."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    found = _claims(token)
    return dict(found) if found is not None else None


@functools.lru_cache(maxsize=4096)
def _claims(token: str) -> dict[str, Any] | None:
    # The same token is read several times per call (the policy input, its owner, its
    # expiry): decoded once. A JWT's parts are base64url JSON; this is all a decode needs.
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header, payload = (json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)), parse_constant=_no_constant)
                           for p in parts[:2])  # fmt: skip
    except (ValueError, binascii.Error, RecursionError):  # deep nesting is no claim either
        return None
    return payload if isinstance(header, dict) and isinstance(payload, dict) else None


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON: a token that holds them is no JWT."""
    raise ValueError(f"{name} is not JSON")


def subject(token: str) -> str:
    """The token's `sub`, unverified; "" when there is none."""
    found = claims(token)
    sub = found.get("sub") if found else None
    return sub if isinstance(sub, str) else ""


def verify(token: str, cert_pem: bytes) -> dict[str, Any]:
    """The claims of a token signed by the key of the certificate CERT_PEM (its first PEM
    block); raises TokenError naming what fails. Expiry is checked by the policies."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenError("the token is too long to be a path token")
    try:
        key = x509.load_pem_x509_certificate(cert_pem).public_key()
    except ValueError as exc:
        raise TokenError(f"the signer's certificate cannot be read: {exc}") from None
    try:
        found = jwt.decode(token, key, algorithms=[ALGORITHM],  # type: ignore[arg-type]
                           options={"verify_exp": False, "verify_aud": False})  # fmt: skip
    except jwt.PyJWTError as exc:
        raise TokenError(f"the token is not signed by that certificate's key: {exc}") from None
    return dict(found)
