"""The live routing policy (router and classifier): reloaded when the file changes or on SIGHUP; a bad
file keeps the old one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import structlog

from service_kit.policy import Policy, PolicyError, load_policy

log = structlog.get_logger()


class PolicySource:
    def __init__(self, path: Path, poll_seconds: float = 2.0) -> None:
        self._path = Path(path)
        self._poll_seconds = poll_seconds
        self._policy = load_policy(self._path)  # at start a bad policy is fatal: fail fast
        self._mtime = self._stat()
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` after each policy change that was taken."""
        self._listeners.append(listener)

    def current(self) -> Policy:
        return self._policy

    def reload(self) -> bool:
        """Load the file again. Returns False, and keeps the old policy, when the new one is invalid."""
        self._mtime = self._stat()
        try:
            policy = load_policy(self._path)
        except PolicyError as error:
            log.error("policy_rejected", path=str(self._path), error=str(error))
            return False
        self._policy = policy
        log.info("policy_reloaded", path=str(self._path), baseline_model=policy.baseline_model)
        for listener in self._listeners:
            listener()
        return True

    async def watch(self) -> None:
        """Poll the file's modification time; cheap, and works on every filesystem and in containers."""
        while True:
            await asyncio.sleep(self._poll_seconds)
            if self._stat() != self._mtime:
                self.reload()

    def _stat(self) -> float:
        try:
            return self._path.stat().st_mtime
        except OSError:
            return 0.0
