"""API keys (R13): inference and admin keys, stored hashed, compared in constant time.

``create_app`` builds one ``KeyRing`` from the settings; routers depend on ``require_inference``
or ``require_admin``. A presented key is hashed (SHA-256) and compared with ``hmac.compare_digest``
against every stored hash, with no early exit, so timing says nothing about which key or how much
of it matched. Keys are never logged or stored in clear; an episode records only ``key_id``, a
short prefix of the key's hash. Admin keys also work for inference.

With no key configured, auth is off: that is only allowed on a loopback address, and
``check_bind`` (called by ``rrr serve`` and at app startup) refuses anything else.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from fastapi import Request

from api.errors import ApiError

KEY_ID_CHARS = 12


class BindRefused(ValueError):
    """No key is configured and the bind address is not loopback."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: ``key_id`` (None when auth is off) and whether the key is an admin key."""

    key_id: str | None
    admin: bool


ANONYMOUS = Principal(key_id=None, admin=True)


def key_id(key: str) -> str:
    """The short, non-reversible id of a key recorded on episodes."""
    return hashlib.sha256(key.encode()).hexdigest()[:KEY_ID_CHARS]


class KeyRing:
    """The hashes of the configured keys; ``identify`` maps a presented key to a Principal."""

    def __init__(self, inference_keys: list[str], admin_keys: list[str]) -> None:
        entries: dict[bytes, bool] = {}
        for key in inference_keys:
            entries.setdefault(hashlib.sha256(key.encode()).digest(), False)
        for key in admin_keys:
            entries[hashlib.sha256(key.encode()).digest()] = True
        self._entries = list(entries.items())
        self.enabled = bool(self._entries)

    def identify(self, presented: str) -> Principal | None:
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found: bool | None = None
        for stored, admin in self._entries:  # every hash is compared: no early exit
            if hmac.compare_digest(digest, stored):
                found = admin
        if found is None:
            return None
        return Principal(key_id=digest.hex()[:KEY_ID_CHARS], admin=found)


def bearer_token(header: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (scheme case-insensitive), or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def authenticate(request: Request) -> Principal:
    keys: KeyRing = request.app.state.rrr.keys
    if not keys.enabled:
        return ANONYMOUS
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise _unauthorized("Missing API key: send the header `Authorization: Bearer <key>`.")
    principal = keys.identify(token)
    if principal is None:
        raise _unauthorized("Invalid API key.")
    return principal


# The dependencies are `async def` on purpose: they only read memory, and FastAPI runs a plain
# `def` dependency in its thread pool, a hop that cost about a sixth of a proxied request's CPU.
async def require_inference(request: Request) -> Principal:
    """FastAPI dependency of the inference routes: any configured key."""
    principal = authenticate(request)
    request.state.principal = principal
    return principal


async def require_admin(request: Request) -> Principal:
    """FastAPI dependency of the inspection and admin routes: an admin key."""
    principal = authenticate(request)
    if not principal.admin:
        raise ApiError(403, "This route needs an admin key.", code="admin_key_required")
    request.state.principal = principal
    return principal


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost`` are loopback; anything else (0.0.0.0, names) is not."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, auth_enabled: bool) -> None:
    """Refuse to serve without keys anywhere but loopback."""
    if not auth_enabled and not is_loopback(host):
        raise BindRefused(
            f"refusing to listen on {host!r} with no API key configured: anyone who can reach it could use "
            "and administer rrr. Set RRR_API_KEYS and RRR_ADMIN_KEYS (comma-separated), or bind 127.0.0.1."
        )
