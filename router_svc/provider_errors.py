"""What a provider's error means for the attempt, classified in one place: whether it is worth
retrying (and counts toward the model's cooldown), whether the provider processed the prompt (and so
charges for it), when the provider asked to be called again, and what the record says of it."""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass

from llmroute.common.v1 import common_pb2
from service_kit.litellm_offline import litellm

# Errors worth retrying on the same model: rate limits, server errors, timeouts, dropped connections.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    litellm.RateLimitError,
    litellm.Timeout,
    litellm.APIConnectionError,
    litellm.InternalServerError,
    litellm.ServiceUnavailableError,
    litellm.BadGatewayError,
    TimeoutError,
)


@dataclass(frozen=True, slots=True)
class Failure:
    """What a provider error means for the attempt."""

    outcome: int  # ATTEMPT_OUTCOME_TIMEOUT or ATTEMPT_OUTCOME_PROVIDER_ERROR
    transient: bool  # worth retrying, and counts toward the model's cooldown
    prompt_processed: bool  # a timeout: the prompt was sent and is charged, as on cancel
    error: str  # its kind and HTTP status, never its text
    # Seconds the provider asked for before the next call (a 429's or 503's `retry-after`), if it did.
    retry_after: float | None = None


def failure_of(error: Exception) -> Failure:
    timed_out = isinstance(error, litellm.Timeout | TimeoutError)
    return Failure(
        outcome=common_pb2.ATTEMPT_OUTCOME_TIMEOUT
        if timed_out
        else common_pb2.ATTEMPT_OUTCOME_PROVIDER_ERROR,
        transient=isinstance(error, TRANSIENT_ERRORS),
        prompt_processed=timed_out,
        error=_provider_error(error),
        retry_after=retry_after_of(error),
    )


# A provider's retry-after longer than this is taken as this (a broken header must not bench a model
# for days); seconds.
MAX_RETRY_AFTER = 300.0


def retry_after_of(error: Exception) -> float | None:
    """The wait a provider's error response asks for: `retry-after-ms`, or `retry-after` in seconds
    or as an HTTP date (RFC 9110 10.2.3); None without one, or with one that does not parse."""
    headers = getattr(error, "litellm_response_headers", None)
    if headers is None:
        try:
            headers = getattr(getattr(error, "response", None), "headers", None)
        except Exception:  # some exceptions' `response` is a property that raises without one
            headers = None
    if not headers:
        return None
    try:
        if (milliseconds := headers.get("retry-after-ms")) is not None:
            seconds = float(milliseconds) / 1000
        elif (value := headers.get("retry-after")) is None:
            return None
        elif value.strip().replace(".", "", 1).isdigit():
            seconds = float(value)
        else:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _provider_error(error: Exception) -> str:
    """What an attempt records of a provider error: its kind and HTTP status, never its text (a
    provider's message can quote the prompt or a key), for clients and the ledger alike."""
    status = getattr(error, "status_code", None)
    return f"{type(error).__name__} ({status})" if isinstance(status, int) else type(error).__name__
