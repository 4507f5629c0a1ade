"""API keys over gRPC (CreateKey, ListKeys, RevokeKey, LookupKey), mixed into `LedgerServicer`, and the
ledger's own key lookup (keys in its database as principals)."""

from __future__ import annotations

import hmac
from typing import Any

import grpc
import structlog

from ledger_svc import validation as v
from ledger_svc.records import timestamp_pb
from ledger_svc.rpc_errors import database_errors
from ledger_svc.store import LedgerStore
from llmroute.ledger.v1 import ledger_pb2
from service_kit import auth

log = structlog.get_logger()


def api_key_pb(row: Any) -> ledger_pb2.ApiKey:
    info = ledger_pb2.ApiKey(
        id=row["id"],
        name=row["name"],
        roles=[r for r in row["roles"].split(",") if r],
        callers=[c for c in row["callers"].split(",") if c],
        created=timestamp_pb(row["created_ts"]),
    )
    if row["revoked_ts"]:
        info.revoked.CopyFrom(timestamp_pb(row["revoked_ts"]))
    return info


def key_lookup(store: LedgerStore) -> auth.Lookup:
    """Keys in the ledger's database as principals: an active key whose digest matches."""

    async def lookup(key_id: str, key_digest: str) -> auth.Principal | None:
        row = await store.key(key_id)
        if row is None or row["revoked_ts"] or not hmac.compare_digest(row["sha256"], key_digest):
            return None
        info = api_key_pb(row)
        return auth.Principal(info.name, frozenset(info.roles), tuple(info.callers), info.id)

    return lookup


class KeyRPCs:
    """The key management RPCs, mixed into the servicer."""

    _store: LedgerStore

    @database_errors
    async def CreateKey(
        self,
        request: ledger_pb2.CreateKeyRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.CreateKeyRequest, ledger_pb2.CreateKeyResponse],
    ) -> ledger_pb2.CreateKeyResponse:
        violations = v.caller_violations("name", request.name)
        if not request.name:
            violations.append(("name", "required: the principal the key acts as"))
        roles = list(request.roles) or ["caller"]
        if set(roles) - set(auth.ROLES):
            violations.append(("roles", f"each one of {', '.join(auth.ROLES)}"))
        if len(request.callers) > 50:
            violations.append(("callers", "at most 50 patterns"))
        for i, pattern in enumerate(request.callers):
            violations += v.caller_violations(f"callers[{i}]", pattern)
            if "," in pattern:
                violations.append((f"callers[{i}]", "must not contain a comma"))
        v.raise_if(violations)
        key_id, key = auth.new_key()
        created = await self._store.create_key(
            key_id, request.name, roles, list(request.callers), auth.digest(key)
        )
        log.info("key_created", key_id=key_id, principal=request.name, roles=",".join(roles))
        info = ledger_pb2.ApiKey(
            id=key_id, name=request.name, roles=roles, callers=request.callers, created=timestamp_pb(created)
        )
        return ledger_pb2.CreateKeyResponse(key=key, info=info)

    @database_errors
    async def ListKeys(
        self,
        request: ledger_pb2.ListKeysRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.ListKeysRequest, ledger_pb2.ListKeysResponse],
    ) -> ledger_pb2.ListKeysResponse:
        return ledger_pb2.ListKeysResponse(keys=[api_key_pb(row) for row in await self._store.keys()])

    @database_errors
    async def RevokeKey(
        self,
        request: ledger_pb2.RevokeKeyRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.RevokeKeyRequest, ledger_pb2.RevokeKeyResponse],
    ) -> ledger_pb2.RevokeKeyResponse:
        v.raise_if(v.key_violations(request))
        revoked = await self._store.revoke_key(request.id)
        log.info("key_revoked", key_id=request.id, revoked=revoked)
        return ledger_pb2.RevokeKeyResponse(revoked=revoked)

    @database_errors
    async def LookupKey(
        self,
        request: ledger_pb2.LookupKeyRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.LookupKeyRequest, ledger_pb2.LookupKeyResponse],
    ) -> ledger_pb2.LookupKeyResponse:
        v.raise_if(v.key_violations(request))
        principal = await key_lookup(self._store)(request.id, request.sha256)
        if principal is None:
            return ledger_pb2.LookupKeyResponse(found=False)
        return ledger_pb2.LookupKeyResponse(
            found=True,
            key=ledger_pb2.ApiKey(
                id=principal.key_id,
                name=principal.name,
                roles=sorted(principal.roles),
                callers=principal.callers,
            ),
        )
