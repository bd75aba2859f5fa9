"""Who may call what: bearer tokens checked by servers, presented by clients (docs/security.md).

Two credentials, least privilege: the *user* token may sample and read (what outside clients and the
dashboard need); the *control* token may also change state (weights, training, checkpoints, runs),
which only the services themselves do. Health and reflection need no token. A method this module does
not list as a user method needs the control token, so a new method is closed until someone opens it.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass
from enum import Enum

import grpc

from mpo.config import AuthConfig

AUTH_METADATA_KEY = "authorization"

#: Infrastructure RPCs that load balancers, probes and `grpcurl`-style tools call without credentials.
INFRASTRUCTURE_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

#: What the user token may call: sampling, labelling without side effects, and every read.
USER_METHODS = frozenset(
    {
        "/mpo.v1.RolloutService/Generate",
        "/mpo.v1.RolloutService/GenerateStream",
        "/mpo.v1.RolloutService/Continue",
        "/mpo.v1.RolloutService/GetStatus",
        "/mpo.v1.RewardService/Score",
        "/mpo.v1.RewardService/BuildPairs",
        "/mpo.v1.TrainerService/GetStatus",
        "/mpo.v1.ControllerService/GetRun",
        "/mpo.v1.ControllerService/ListRuns",
        "/mpo.v1.ControllerService/ListRounds",
        "/mpo.v1.ControllerService/WatchRounds",
    }
)


class Access(Enum):
    """The credential a method needs."""

    OPEN = "open"
    USER = "user"
    CONTROL = "control"


def access_for(method: str) -> Access:
    if method.startswith(INFRASTRUCTURE_PREFIXES):
        return Access.OPEN
    return Access.USER if method in USER_METHODS else Access.CONTROL


def read_token(variable: str) -> str | None:
    """The token in `variable`; None when unset. Set but empty is a mistake (auth would silently be off)."""
    value = os.environ.get(variable)
    if value is None:
        return None
    if not value.strip():
        raise ValueError(f"${variable} is set but empty: set a token, or unset it")
    return value


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (a name other than localhost counts as not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Credentials:
    """The tokens a process holds: what its server accepts and what its clients present."""

    control: str | None
    user: str | None

    @classmethod
    def from_env(cls, auth: AuthConfig) -> Credentials:
        credentials = cls(control=read_token(auth.control_token_env), user=read_token(auth.user_token_env))
        if credentials.user is not None and credentials.control is None:
            raise ValueError(
                f"${auth.user_token_env} is set but ${auth.control_token_env} is not: the control token "
                "is needed whenever auth is on"
            )
        if credentials.user is not None and credentials.user == credentials.control:
            raise ValueError(f"${auth.user_token_env} equals ${auth.control_token_env}: use two different tokens")
        return credentials

    @property
    def for_sampling(self) -> str | None:
        """What a client that only samples presents (least privilege): the user token when there is one."""
        return self.user or self.control


def serving_credentials(auth: AuthConfig, host: str, what: str) -> Credentials:
    """The tokens a server on `host` accepts. Raises ValueError for a misconfiguration, and for a server
    beyond loopback without a token unless `auth.open` says so explicitly."""
    credentials = Credentials.from_env(auth)
    if credentials.control is None and not auth.open and not is_loopback(host):
        raise ValueError(
            f"{what}: no token in ${auth.control_token_env}, and {host!r} is not a loopback address: "
            f"set ${auth.control_token_env} (and ${auth.user_token_env} for sampling clients), or set "
            "auth.open: true to serve every method to anyone who reaches the port"
        )
    return credentials


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return ((AUTH_METADATA_KEY, f"Bearer {token}"),) if token else ()


def _matches(presented: bytes, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(presented, f"Bearer {token}".encode())


class Authenticator:
    """Decides whether a call may proceed, from its metadata alone (before its body is read).

    Without a control token everything is allowed (a loopback or explicitly open server). Tokens are
    compared in constant time.
    """

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    @property
    def enabled(self) -> bool:
        return self._credentials.control is not None

    def check(
        self, method: str, metadata: tuple[tuple[str, str | bytes], ...] | None
    ) -> tuple[grpc.StatusCode, str] | None:
        """None when allowed, else the status and reason to refuse with."""
        access = access_for(method)
        if not self.enabled or access is Access.OPEN:
            return None
        presented = next((value for key, value in metadata or () if key == AUTH_METADATA_KEY), None)
        if presented is None:
            return grpc.StatusCode.UNAUTHENTICATED, "missing bearer token (metadata 'authorization: Bearer <token>')"
        if isinstance(presented, str):
            presented = presented.encode()
        if _matches(presented, self._credentials.control):
            return None
        if _matches(presented, self._credentials.user):
            if access is Access.USER:
                return None
            return (
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} needs the control token; the user token only samples and reads",
            )
        return grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token"
