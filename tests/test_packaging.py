"""Installed as a package (a wheel, not the checkout), the services still find what they ship."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHECK = """
import service_kit, difficulty
from service_kit.policy import DEFAULT_POLICY_PATH, load_policy
from difficulty import DEFAULT_ARTIFACT_DIR
assert service_kit.__file__.startswith(INSTALLED), service_kit.__file__
assert not DEFAULT_POLICY_PATH.is_symlink() and str(DEFAULT_POLICY_PATH).startswith(INSTALLED)
print(load_policy(DEFAULT_POLICY_PATH).baseline_model)
assert any(DEFAULT_ARTIFACT_DIR.iterdir()) and str(DEFAULT_ARTIFACT_DIR).startswith(INSTALLED)
"""


def test_the_wheel_carries_the_default_policy_and_the_model(tmp_path: Path) -> None:
    uv = Path(sys.executable).with_name("uv")
    leftover = not (ROOT / "build").exists()  # setuptools builds in the checkout's build/
    try:
        subprocess.run(
            [str(uv), "build", "--wheel", "--out-dir", str(tmp_path / "dist"), "-q", str(ROOT)],
            check=True,
            cwd=ROOT,
        )
    finally:
        if leftover:
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    installed = tmp_path / "installed"
    zipfile.ZipFile(wheel).extractall(installed)
    result = subprocess.run(
        [sys.executable, "-c", f"INSTALLED = {str(installed)!r}\n{CHECK}"],
        cwd=tmp_path,  # not the checkout
        env={**os.environ, "PYTHONPATH": str(installed)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        result.stdout.strip()
        == (ROOT / "config" / "policy.yaml").read_text().split("baseline_model:")[1].split()[0]
    )
