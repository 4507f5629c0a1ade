"""Import litellm once, offline: its price map comes from the installed wheel, not the network."""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

# litellm prints banners and debug hints to stdout by default; our logs are JSON lines.
litellm.suppress_debug_info = True

__all__ = ["litellm"]
