"""The Route and RouteStream requests checked field by field, into the router's `RouteInput`: every
problem is one BadRequest field violation under INVALID_ARGUMENT."""

from __future__ import annotations

import math
import re
import uuid

from llmroute.common.v1 import common_pb2
from llmroute.router.v1 import router_pb2
from router_svc import schemas
from router_svc.idempotency import fingerprint
from router_svc.request import RouteInput
from router_svc.settings import RouterSettings
from router_svc.validators import Expectations
from service_kit import auth, metadata
from service_kit.errors import InvalidArgument
from service_kit.validation import bounded, message_violations

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_CALLER = re.compile(r"^[A-Za-z0-9._:@/-]{1,128}$")


def parse_request(
    request: router_pb2.RouteRequest | router_pb2.RouteStreamRequest,
    invocation_metadata: object,
    settings: RouterSettings,
) -> RouteInput:
    """Validate a Route/RouteStream request; every problem becomes one field violation."""
    violations = message_violations(
        request.messages, settings.max_prompt_chars, max_messages=settings.max_messages
    )
    # Only the request's own field is an idempotency key; x-request-id metadata only traces.
    request_id = request.request_id or uuid.uuid4().hex
    if not _REQUEST_ID.match(request_id):
        violations.append(("request_id", "must be 1-128 characters of letters, digits and ._:-"))
    # Open (no keys): the caller is whoever the request names. With keys: the key's principal, or a
    # sub-caller it may name (service_kit/auth.py); naming anyone else is PERMISSION_DENIED.
    principal = auth.current()
    requested = request.caller or metadata.get(invocation_metadata, metadata.CALLER)
    caller = auth.scope_caller(requested) or (principal.name if principal else settings.default_caller)
    if not _CALLER.match(caller):
        violations.append(("caller", "must be 1-128 characters of letters, digits and ._:@/-"))
    options = request.options
    max_output_tokens = options.max_output_tokens if options.HasField("max_output_tokens") else None
    if max_output_tokens is not None and not 0 < max_output_tokens <= settings.max_output_tokens:
        violations.append(
            (
                "options.max_output_tokens",
                f"must be a number of tokens between 1 and {settings.max_output_tokens}",
            )
        )
    temperature = options.temperature if options.HasField("temperature") else None
    if temperature is not None and not (math.isfinite(temperature) and 0 <= temperature <= 2):
        violations.append(("options.temperature", "must be a number between 0 and 2"))
    max_cost = options.max_cost_usd if options.HasField("max_cost_usd") else None
    if max_cost is not None and not (math.isfinite(max_cost) and max_cost >= 0):
        violations.append(("options.max_cost_usd", "must be a non-negative number of US dollars"))
    if options.force_tier not in common_pb2.Tier.values():
        violations.append(("options.force_tier", f"unknown tier {options.force_tier}"))
    if len(options.force_model) > 200:
        violations.append(("options.force_model", "is longer than 200 characters"))
    schema = None
    if options.json_schema:
        try:
            schema = schemas.parse(options.json_schema, settings.max_json_schema_bytes)
        except schemas.SchemaProblem as problem:
            violations.append(("options.json_schema", str(problem)))
    if violations:
        raise InvalidArgument(bounded(violations))
    return RouteInput(
        messages=tuple(request.messages),
        request_id=request_id,
        client_request_id=bool(request.request_id),
        fingerprint=fingerprint(request.messages, options) if request.request_id else b"",
        trace_id=metadata.get(invocation_metadata, metadata.REQUEST_ID) or request_id,
        caller=caller,
        max_output_tokens=max_output_tokens,
        temperature=temperature,
        force_tier=options.force_tier,
        force_model=options.force_model,
        max_cost_usd=max_cost,
        expectations=Expectations(
            json_output=options.json_output or schema is not None,
            json_schema=schema,
            caller_capped_output=max_output_tokens is not None,
        ),
        buffered_stream=options.buffered_stream,
    )


def max_request_bytes(settings: RouterSettings) -> int:
    """The largest Route request the limits admit, as gRPC receives it: every text at 4 bytes a
    character (UTF-8's most), the schema, and room for the fields' framing. Anything larger is refused
    by gRPC before it is decoded."""
    return (
        4 * settings.max_prompt_chars
        + settings.max_json_schema_bytes
        + 64 * settings.max_messages
        + (64 << 10)
    )
