"""Edits to the policy file that keep its comments: new thresholds and offsets, validated, written atomically.

Used by `llmroute tune --apply`; the router reloads the file when it changes.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from service_kit.policy import Offsets, Policy, PolicyError, Thresholds, load_policy

_THRESHOLDS = re.compile(r"^thresholds:[ \t]*(?:#[^\n]*)?\n((?:[ \t]+[^\n]*\n|[ \t]*\n)*)", re.MULTILINE)
_OFFSETS = re.compile(r"^offsets:[ \t]*(?:#[^\n]*)?\n(?:[ \t]+[^\n]*\n|[ \t]*\n)*", re.MULTILINE)


def rewrite(text: str, thresholds: Thresholds, offsets: Offsets | None = None) -> str:
    """The policy text with the values of its `thresholds:` block replaced and, when `offsets` is
    given, its `offsets:` block replaced (added after the thresholds; removed when empty)."""
    match = _THRESHOLDS.search(text)
    if match is None:
        raise PolicyError("the policy has no top-level 'thresholds:' block")
    block = match.group(1)
    for name in ("moderate", "complex", "reasoning"):
        value = getattr(thresholds, name)
        block, n = re.subn(
            rf"^([ \t]+{name}:[ \t]*)[-+0-9.eE]+",
            lambda m, v=value: f"{m.group(1)}{v:.4f}",
            block,
            count=1,
            flags=re.MULTILINE,
        )
        if n != 1:
            raise PolicyError(f"the policy's thresholds block has no '{name}:' entry")
    text = text[: match.start(1)] + block + text[match.end(1) :]
    if offsets is None:
        return text
    text = _OFFSETS.sub("", text)
    rendered = _render(offsets)
    if rendered:
        end = _THRESHOLDS.search(text)
        assert end is not None
        text = text[: end.end()] + rendered + text[end.end() :]
    return text


def _render(offsets: Offsets) -> str:
    lines = []
    for group in ("family", "category"):
        values = getattr(offsets, group)
        if values:
            lines.append(f"  {group}:")
            lines += [f"    {key}: {value:+.4f}" for key, value in sorted(values.items())]
    if not lines:
        return ""
    return (
        "\n# Added to the score before the thresholds, by `llmroute tune` (positive routes up).\noffsets:\n"
        + ("\n".join(lines) + "\n")
    )


def write(path: str | Path, text: str) -> Policy:
    """Validate `text` as a policy, then replace the file atomically; returns the policy."""
    path = Path(path)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=".policy-", suffix=".yaml", delete=False
    ) as tmp:
        tmp.write(text)
    try:
        policy = load_policy(tmp.name)
        os.replace(tmp.name, path)
    finally:
        if os.path.exists(tmp.name):
            os.unlink(tmp.name)
    return policy
