"""The one place litellm is imported: offline, so its price map comes from the installed wheel, not
the network (unless LITELLM_LOCAL_MODEL_COST_MAP is set otherwise). Import `litellm` from here, never
directly; the import takes seconds, so services that only need prices import it lazily."""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

# litellm prints banners and debug hints to stdout by default; our logs are JSON lines.
litellm.suppress_debug_info = True

__all__ = ["litellm"]
