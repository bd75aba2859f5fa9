"""Bearer-token authentication shared by servers (checking) and clients (sending)."""

from __future__ import annotations

import hmac
import os

AUTH_METADATA_KEY = "authorization"

#: Infrastructure RPCs that load balancers and `grpcurl`-style tools call without credentials.
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def token_from_env(variable: str) -> str | None:
    """The configured token, or None (auth off) when the variable is unset or empty."""
    return os.environ.get(variable) or None


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return ((AUTH_METADATA_KEY, f"Bearer {token}"),) if token else ()


class Authenticator:
    """Decides whether a call may proceed; constant-time comparison of the presented token."""

    def __init__(self, token: str | None) -> None:
        self._expected = f"Bearer {token}".encode() if token else None

    @property
    def enabled(self) -> bool:
        return self._expected is not None

    def check(self, method: str, metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
        """None when allowed, else the reason to return with UNAUTHENTICATED."""
        if self._expected is None or method.startswith(UNAUTHENTICATED_PREFIXES):
            return None
        presented = next((value for key, value in metadata or () if key == AUTH_METADATA_KEY), None)
        if presented is None:
            return "missing bearer token (metadata 'authorization: Bearer <token>')"
        if isinstance(presented, str):
            presented = presented.encode()
        if not hmac.compare_digest(presented, self._expected):
            return "invalid bearer token"
        return None
