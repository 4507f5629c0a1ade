"""What the simulator keeps between requests: settings, fault rules, counters, connections seen."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from simulator.faults import FaultRules
from simulator.settings import SimulatorSettings
from simulator.stats import Stats


@dataclass
class SimulatorState:
    settings: SimulatorSettings
    rules: FaultRules = field(default_factory=FaultRules)
    stats: Stats = field(default_factory=Stats)
    # Transports that already sent a request: the next request on them pays no connect delay. Weak, so
    # a closed connection is forgotten without bookkeeping.
    _transports: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)

    def is_new_connection(self, request: web.Request) -> bool:
        transport = request.transport
        if transport is None or transport in self._transports:
            return False
        self._transports.add(transport)
        self.stats.connections += 1
        return True


STATE = web.AppKey("simulator_state", SimulatorState)
