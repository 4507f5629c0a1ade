"""structlog configuration shared by every service: JSON lines with contextvars merged in."""

from __future__ import annotations

import json as json_module
import logging
import sys

import structlog


class _LibraryFormatter(logging.Formatter):
    """Libraries' log records as JSON lines. Their message text is left out unless asked for: a
    provider SDK's error message can quote the request, and prompts never go to logs by default."""

    def __init__(self, with_messages: bool) -> None:
        super().__init__()
        self._with_messages = with_messages

    def format(self, record: logging.LogRecord) -> str:
        entry = {"event": "library_log", "logger": record.name, "level": record.levelname.lower()}
        if self._with_messages:
            entry["message"] = record.getMessage()
        return json_module.dumps(entry)


def configure_logging(
    service: str, level: str = "INFO", json: bool = True, library_messages: bool = False
) -> None:
    """Configure structlog once per process. Prompt text is never passed to a logger by our code."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        # One write per line (message and newline together): worker processes share stdout, and a
        # line written in two pieces can be split by another process's line.
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # Libraries that log through the standard library: warnings and errors only, as JSON on stdout.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_LibraryFormatter(library_messages))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    for noisy in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx", "openai", "anthropic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
