"""Who is calling: API keys (`authorization: Bearer <key>`) mapped to principals with roles.

Keys live hashed (SHA-256; a key is 256 random bits, so a fast hash is enough) in a keys file that every
service reads (`*_KEYS_FILE`, a Kubernetes Secret in production) and `llmroute keys` edits; a service
picks up a change within a second. Roles:

- `caller`: routes, and reads its own stats, budgets and feedback; it may name a sub-caller only where
  the key's `callers` patterns allow it (`team-a/*`);
- `admin`: budgets, all stats, exports;
- `service`: one service calling another (the router writing to the ledger, asking the classifier).

With no keys file a service runs open, and only on a loopback address (it refuses to start bound
elsewhere unless `*_ALLOW_OPEN=true` says that the network in front of it is the control).
"""

from __future__ import annotations

import contextvars
import datetime
import fnmatch
import hashlib
import hmac
import ipaddress
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog
import yaml

from service_kit import metadata
from service_kit.errors import PermissionDenied, Reason, ResourceExhausted, ServiceError, Unavailable

log = structlog.get_logger()

ROLES = ("caller", "admin", "service")
KEY_PREFIX = "lrk_"
AUTHORIZATION = "authorization"


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = Reason.UNAUTHENTICATED


class AuthConfigError(RuntimeError):
    """The service would be open to a network it does not control."""


@dataclass(frozen=True)
class Principal:
    """The authenticated identity of a call."""

    name: str
    roles: frozenset[str]
    callers: tuple[str, ...] = ()  # sub-callers the key may name, as fnmatch patterns
    key_id: str = ""

    def may_act_as(self, caller: str) -> bool:
        if caller == self.name or self.roles & {"admin", "service"}:
            return True
        return any(fnmatch.fnmatchcase(caller, pattern) for pattern in self.callers)


_CURRENT: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


def current() -> Principal | None:
    """The calling principal; None when the service runs open (no keys file)."""
    return _CURRENT.get()


def scope_caller(requested: str, field_name: str = "caller") -> str:
    """The caller a request may act for or read: as asked when the principal may; a `caller` principal
    asking for nothing gets its own name (never everyone's). Open services take the request as it is."""
    principal = current()
    if principal is None:
        return requested
    if not requested:
        return "" if principal.roles & {"admin", "service"} else principal.name
    if principal.may_act_as(requested):
        return requested
    raise PermissionDenied(
        f"this key may not act for or read caller {requested!r}",
        reason=Reason.CALLER_NOT_ALLOWED,
        metadata={"field": field_name, "caller": requested, "principal": principal.name},
    )


# ---- keys -----------------------------------------------------------------------------------------


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh key and its id: `lrk_<id>_<secret>`; the id is public (listed, logged), the rest is not."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str:
    if not key.startswith(KEY_PREFIX):
        return ""
    return key[len(KEY_PREFIX) :].split("_", 1)[0]


@dataclass
class KeyEntry:
    id: str
    name: str
    roles: list[str]
    sha256: str
    callers: list[str] = field(default_factory=list)
    created: str = ""
    revoked: str = ""

    def principal(self) -> Principal:
        return Principal(self.name, frozenset(self.roles), tuple(self.callers), self.id)


def read_keys(path: Path) -> list[KeyEntry]:
    """The keys file's entries; a missing file is no keys. Raises ValueError on a malformed file."""
    if not path.exists():
        return []
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict) or not isinstance(loaded.get("keys", []), list):
        raise ValueError(f"{path}: expected a mapping with a 'keys' list")
    entries = []
    for raw in loaded.get("keys", []):
        entry = KeyEntry(**raw)
        unknown = set(entry.roles) - set(ROLES)
        if unknown or not entry.roles:
            raise ValueError(f"{path}: key {entry.id}: roles must be among {', '.join(ROLES)}")
        entries.append(entry)
    return entries


def write_keys(path: Path, entries: Iterable[KeyEntry]) -> None:
    """Atomically (a reader sees the old file or the new one), readable by its owner only."""
    data = {"keys": [{k: v for k, v in vars(entry).items() if v not in ("", [])} for entry in entries]}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as out:
        out.write("# llmroute API keys: SHA-256 digests only. Edit with `llmroute keys`.\n")
        yaml.safe_dump(data, out, sort_keys=False)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def create_key(path: Path, name: str, roles: list[str], callers: list[str] | None = None) -> tuple[str, str]:
    """Add a key to the keys file; returns (id, key). The key is shown once and never stored."""
    unknown = set(roles) - set(ROLES)
    if unknown or not roles:
        raise ValueError(f"roles must be among {', '.join(ROLES)}")
    entries = read_keys(path)
    key_id, key = new_key()
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    entries.append(KeyEntry(key_id, name, list(roles), digest(key), list(callers or []), created))
    write_keys(path, entries)
    return key_id, key


def revoke_key(path: Path, key_id: str) -> bool:
    entries = read_keys(path)
    found = [entry for entry in entries if entry.id == key_id and not entry.revoked]
    for entry in found:
        entry.revoked = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    write_keys(path, entries)
    return bool(found)


class KeyRing:
    """The keys file, read again when it changes (checked at most once a second)."""

    def __init__(self, path: Path, check_seconds: float = 1.0) -> None:
        self._path = Path(path)
        self._check_seconds = check_seconds
        self._mtime = self._stat()
        self._by_id = self._load()  # at start a bad file is fatal
        self._checked = time.monotonic()

    def authenticate(self, key: str) -> Principal | None:
        self._refresh()
        entry = self._by_id.get(key_id_of(key))
        if entry is None or entry.revoked or not hmac.compare_digest(entry.sha256, digest(key)):
            return None
        return entry.principal()

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self._check_seconds:
            return
        self._checked = now
        mtime = self._stat()
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            self._by_id = self._load()
            log.info("keys_reloaded", keys=len(self._by_id))
        except (OSError, ValueError, TypeError, yaml.YAMLError) as error:
            log.error("keys_rejected", path=str(self._path), error=type(error).__name__)

    def _load(self) -> dict[str, KeyEntry]:
        return {entry.id: entry for entry in read_keys(self._path)}

    def _stat(self) -> float:
        try:
            return self._path.stat().st_mtime
        except OSError:
            return 0.0


# ---- the gate every server applies ----------------------------------------------------------------


@dataclass(frozen=True)
class Gate:
    """Who may call which method of one server: `rules` maps a method name (the part after the last
    '/') to the roles allowed; a method not in it is admin-only. No key ring: open (loopback only).

    Each principal may have at most `max_calls` calls in progress at once, of which at most
    `max_streams` streams (a watch or an export holds its slot until it ends): one team's flood, or
    its idle streams, cannot take the service from the others. 0: no limit."""

    keys: KeyRing | None
    rules: Mapping[str, frozenset[str]]
    max_calls: int = 0
    max_streams: int = 0
    # Keys not in the file: the ledger's database (created over CreateKey), asked through this.
    remote: KeyCache | None = None
    _active: dict[tuple[str, bool], int] = field(default_factory=dict, compare=False)

    def hold(self, principal: Principal | None, stream: bool) -> Callable[[], None]:
        """Take a call slot for `principal` (RESOURCE_EXHAUSTED when it has none left); returns the
        release."""
        if principal is None:
            return _nothing
        limits = [(principal.name, False, self.max_calls)]
        if stream:
            limits.append((principal.name, True, self.max_streams))
        for name, streams, limit in limits:
            if limit and self._active.get((name, streams), 0) >= limit:
                what = "streams" if streams else "calls"
                raise ResourceExhausted(
                    f"{principal.name} has {limit} {what} in progress, the most one principal may have",
                    reason=Reason.TOO_MANY_CONCURRENT_CALLS,
                    metadata={"principal": principal.name, "limit": str(limit), "kind": what},
                )
        for name, streams, _ in limits:
            self._active[(name, streams)] = self._active.get((name, streams), 0) + 1

        def release() -> None:
            for name, streams, _ in limits:
                left = self._active[(name, streams)] - 1
                if left:
                    self._active[(name, streams)] = left
                else:
                    del self._active[(name, streams)]

        return release

    async def admit(self, method: str, invocation_metadata: Any) -> Principal | None:
        """The principal of a call, or raises Unauthenticated / PermissionDenied."""
        if self.keys is None:
            return None
        key = _bearer(invocation_metadata)
        if not key:
            raise Unauthenticated(
                "send an API key: metadata 'authorization: Bearer <key>'", reason=Reason.API_KEY_MISSING
            )
        principal = self.keys.authenticate(key)
        if principal is None and self.remote is not None and key_id_of(key):
            principal = await self.remote.principal(key_id_of(key), digest(key))
        if principal is None:
            raise Unauthenticated(
                "the API key is unknown or revoked",
                reason=Reason.API_KEY_INVALID,
                metadata={"key_id": key_id_of(key)},
            )
        name = method.rsplit("/", 1)[-1]
        allowed = self.rules.get(name, frozenset({"admin"}))
        if not principal.roles & allowed:
            raise PermissionDenied(
                f"{name} needs one of the roles {', '.join(sorted(allowed))}",
                reason=Reason.ROLE_REQUIRED,
                metadata={"method": name, "roles": ",".join(sorted(allowed)), "principal": principal.name},
            )
        return principal

    @staticmethod
    def bind(principal: Principal | None) -> None:
        _CURRENT.set(principal)


def _nothing() -> None:
    return None


Lookup = Callable[[str, str], Awaitable["Principal | None"]]


class KeyCache:
    """Keys looked up elsewhere (the ledger's database), by id and digest, remembered briefly: a key
    found for `ttl` seconds (so a revocation takes effect within that), one not found for `miss_ttl`.
    A lookup that fails is UNAVAILABLE, never taken as "no such key"."""

    def __init__(
        self, lookup: Lookup, ttl: float = 10.0, miss_ttl: float = 2.0, max_entries: int = 10_000
    ) -> None:
        self._lookup = lookup
        self._ttl = ttl
        self._miss_ttl = miss_ttl
        self._max = max_entries
        self._known: dict[str, tuple[float, Principal | None]] = {}

    async def principal(self, key_id: str, key_digest: str) -> Principal | None:
        now = time.monotonic()
        known = self._known.get(key_digest)
        if known is not None and known[0] > now:
            return known[1]
        try:
            found = await self._lookup(key_id, key_digest)
        except Exception as error:  # the lookup's transport: said as such, never as a wrong key
            raise Unavailable(
                "API keys cannot be checked now; retry", reason=Reason.KEY_LOOKUP_UNAVAILABLE
            ) from error
        if len(self._known) >= self._max:
            self._known.clear()
        self._known[key_digest] = (now + (self._ttl if found else self._miss_ttl), found)
        return found


def _bearer(invocation_metadata: Any) -> str:
    scheme, _, token = metadata.get(invocation_metadata, AUTHORIZATION).partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def gate_for(
    service: str, settings: Any, rules: Mapping[str, Iterable[str]], remote: KeyCache | None = None
) -> Gate:
    """A server's gate from its settings (service_kit.settings.ServiceSettings). Without keys it runs
    open, which it says at start, and only on loopback unless `allow_open`; bound elsewhere without
    either, it refuses to start."""
    frozen = {method: frozenset(roles) for method, roles in rules.items()}
    if settings.keys_file is not None:
        return Gate(
            KeyRing(settings.keys_file),
            frozen,
            settings.max_calls_per_principal,
            settings.max_streams_per_principal,
            remote,
        )
    host = settings.host
    if is_loopback(host):
        log.warning("auth_open", service=service, host=host, detail="no keys file: open on loopback only")
    elif settings.allow_open:
        log.warning("auth_open", service=service, host=host, detail="no keys file: open (ALLOW_OPEN)")
    else:
        raise AuthConfigError(
            f"{service}: bound to {host} with no keys file: set {service.upper()}_KEYS_FILE "
            f"(or {service.upper()}_ALLOW_OPEN=true when the network in front of it controls access)"
        )
    return Gate(None, frozen)


# ---- outgoing calls ---------------------------------------------------------------------------------


class _Bearer(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
):
    """Adds `authorization: Bearer <key>` to every call on a channel."""

    def __init__(self, key: str) -> None:
        self._pair = (AUTHORIZATION, f"Bearer {key}")

    def _with_key(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        pairs = [pair for pair in (details.metadata or ()) if pair[0] != AUTHORIZATION]
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*pairs, self._pair),
            details.credentials,
            details.wait_for_ready,
        )

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_key(client_call_details), request)

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_key(client_call_details), request)


def channel(
    address: str,
    key: str | None,
    options: list[tuple[str, Any]] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    """A channel to another service, carrying this service's key when it has one, over TLS with
    `credentials` (service_kit/tls.py)."""
    interceptors = [_Bearer(key)] if key else None
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
