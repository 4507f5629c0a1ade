"""An OpenAI-compatible LLM simulator: plausible answers, real token counts, latency and fault injection.

Public API: `create_app`, `start_simulator`, `SimulatorSettings`; run it with `python -m simulator`.
"""

from simulator.server import create_app, start_simulator
from simulator.settings import SimulatorSettings

__all__ = ["SimulatorSettings", "create_app", "start_simulator"]
