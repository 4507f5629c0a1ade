"""Builds llmroute-client on its own: the client package and the stubs it needs (the router's and the
common protos, compiled here), without the services. From a checkout: `pip install ./clients/python`.

The sources are staged in `src/` when the checkout is there (and shipped in the sdist, so a wheel
built from the sdist has them too)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
STAGE = HERE / "src"
# router.proto still imports the classifier's messages (issue 12): its stubs come along.
PROTOS = (
    "llmroute/common/v1/common.proto",
    "llmroute/classifier/v1/classifier.proto",
    "llmroute/router/v1/router.proto",
)


def stage() -> None:
    shutil.rmtree(STAGE, ignore_errors=True)
    shutil.copytree(
        ROOT / "llmroute_client", STAGE / "llmroute_client", ignore=shutil.ignore_patterns("__pycache__")
    )
    protoc = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'protos'}"]
    outputs = [f"--python_out={STAGE}", f"--pyi_out={STAGE}", f"--grpc_python_out={STAGE}"]
    subprocess.run([*protoc, *outputs, *PROTOS], check=True)
    for directory in [
        STAGE / "llmroute",
        *(STAGE / "llmroute").glob("*"),
        *(STAGE / "llmroute").glob("*/v1"),
    ]:
        (directory / "__init__.py").touch()


if (ROOT / "llmroute_client").is_dir() and (ROOT / "protos").is_dir():
    stage()

setup(packages=find_packages(str(STAGE)), package_dir={"": "src"}, package_data={"": ["*.pyi", "py.typed"]})
