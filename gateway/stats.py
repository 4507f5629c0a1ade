"""GET /stats and GET /stats/stream: query options → GetStatsRequest / WatchSpendRequest, and the
replies as JSON (field names as in the proto).

/stats options: `last_minutes` (N > 0), or `since` / `until` (ISO 8601; UTC when no offset is given);
nothing: all time. `group_by` (repeatable or comma-separated): model, tier, caller, category, hour,
policy_version; nothing: the ledger's default (model, tier, caller). `caller`: only that caller.

/stats/stream options (WatchSpend's): `last_minutes` (0 or absent: since 00:00 UTC today),
`interval_seconds` (the longest wait between snapshots; the ledger also sends one soon after new
records land), `caller`. The ledger checks the values' ranges.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from starlette.datastructures import QueryParams

from gateway.errors import invalid_request
from llmroute.ledger.v1 import ledger_pb2

if TYPE_CHECKING:
    # A message's DESCRIPTOR is the upb extension's or the pure-Python one (types-protobuf), alike here.
    from google._upb._message import FieldDescriptor as UpbFieldDescriptor

GROUPS = {
    name.removeprefix("GROUP_BY_").lower(): value
    for name, value in ledger_pb2.GroupBy.items()
    if value != ledger_pb2.GROUP_BY_UNSPECIFIED
}
_KNOWN = frozenset({"last_minutes", "since", "until", "group_by", "caller"})


def _time(params: QueryParams, name: str) -> dt.datetime | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise invalid_request(name, "must be an ISO 8601 date-time, e.g. 2026-11-30T12:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def parse(params: QueryParams) -> ledger_pb2.GetStatsRequest:
    unknown = sorted(set(params) - _KNOWN)
    if unknown:
        raise invalid_request(unknown[0], "unknown option; expected " + ", ".join(sorted(_KNOWN)))
    request = ledger_pb2.GetStatsRequest(caller=params.get("caller", ""))
    last = params.get("last_minutes")
    if last is not None:
        if not last.isdigit() or not 0 < int(last) < 2**31:
            raise invalid_request("last_minutes", "must be a whole number of minutes above 0")
        request.window.last_minutes = int(last)
    since, until = _time(params, "since"), _time(params, "until")
    if since is not None:
        request.window.since.FromDatetime(since)
    if until is not None:
        request.window.until.FromDatetime(until)
    for value in params.getlist("group_by"):
        for name in filter(None, (part.strip() for part in value.split(","))):
            if name not in GROUPS:
                raise invalid_request(
                    "group_by", f"unknown grouping {name[:40]!r}; expected one of {', '.join(GROUPS)}"
                )
            request.group_by.append(GROUPS[name])
    return request


_WATCH_KNOWN = frozenset({"last_minutes", "interval_seconds", "caller"})


def parse_watch(params: QueryParams) -> ledger_pb2.WatchSpendRequest:
    unknown = sorted(set(params) - _WATCH_KNOWN)
    if unknown:
        raise invalid_request(unknown[0], "unknown option; expected " + ", ".join(sorted(_WATCH_KNOWN)))
    request = ledger_pb2.WatchSpendRequest(caller=params.get("caller", ""))
    last = params.get("last_minutes")
    if last is not None:
        if not last.isdigit() or int(last) >= 2**31:
            raise invalid_request("last_minutes", "must be a whole number of minutes (0: today, UTC)")
        request.last_minutes = int(last)
    interval = params.get("interval_seconds")
    if interval is not None:
        try:
            request.interval_seconds = float(interval)
        except ValueError:
            raise invalid_request("interval_seconds", "must be a number of seconds") from None
    return request


def param_for(field: str) -> str:
    """A GetStats field in the ledger's violations → the query option it came from."""
    return field.removeprefix("window.")


def to_json(reply: ledger_pb2.GetStatsResponse) -> dict[str, Any]:
    """The reply with the proto's field names, every field present (zeros too: a dashboard reads
    `totals.cost_usd` whether or not anything was spent), counts as JSON numbers (not the strings
    proto3's JSON mapping makes of 64-bit integers), enums by name, times in ISO 8601."""
    return _message(reply)


def snapshot_to_json(reply: ledger_pb2.WatchSpendResponse) -> dict[str, Any]:
    """A WatchSpend snapshot, like `to_json`."""
    return _message(reply)


def _message(message: Message) -> dict[str, Any]:
    return {f.name: _field(f, getattr(message, f.name)) for f in message.DESCRIPTOR.fields}


def _field(f: FieldDescriptor | UpbFieldDescriptor, value: Any) -> Any:
    if f.is_repeated:
        return [_value(f, item) for item in value]
    return _value(f, value)


def _value(f: FieldDescriptor | UpbFieldDescriptor, value: Any) -> Any:
    if f.type == FieldDescriptor.TYPE_ENUM and f.enum_type is not None:
        return f.enum_type.values_by_number[value].name if value in f.enum_type.values_by_number else value
    if isinstance(value, Timestamp):
        return value.ToDatetime(dt.UTC).isoformat().replace("+00:00", "Z") if value.ByteSize() else None
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        return _message(value)
    return value
