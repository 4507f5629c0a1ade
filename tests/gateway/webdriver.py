"""Headless Chromium driven through chromedriver's W3C WebDriver HTTP API, with the standard library.

Why not selenium: the test needs six commands (new session, navigate, run a script, set the window,
screenshot, quit), which are a few lines of JSON over HTTP; selenium would add a dependency whose
Selenium Manager also tries to download a browser and driver when it does not find them, where this
uses Debian's `chromium` and `chromium-driver` and nothing else.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def chromium_paths() -> tuple[str, str] | None:
    """(browser, driver) when Debian's packages are installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def require_chromium() -> None:
    """Skip without Debian's chromium and chromium-driver, except under CI (.ci/run installs them)."""
    import pytest

    if chromium_paths() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are not installed (.ci/run installs them)")
        pytest.skip(
            "chromium and chromium-driver are not installed: apt-get install -y chromium chromium-driver"
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Browser:
    """One WebDriver session."""

    def __init__(self, driver_url: str, session: str) -> None:
        self._base = f"{driver_url}/session/{session}"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        return _request(method, self._base + path, body)

    def get(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def script(self, source: str, *args: Any) -> Any:
        """Run `source` (a function body; `arguments` holds args) in the page; its return value."""
        return self._call("POST", "/execute/sync", {"script": source, "args": list(args)})

    def text(self, selector: str) -> str:
        return str(
            self.script(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';", selector
            )
        )

    def attribute(self, selector: str, name: str) -> str | None:
        found = self.script(
            "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
            selector,
            name,
        )
        return None if found is None else str(found)

    def screenshot(self) -> bytes:
        return base64.b64decode(self._call("GET", "/screenshot"))

    def wait_for(self, condition: Callable[[], T | None], timeout: float = 20, what: str = "") -> T:
        """Poll `condition` until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
            time.sleep(0.1)


def _request(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return json.loads(reply.read())["value"]
    except urllib.error.HTTPError as error:
        raise AssertionError(f"WebDriver {method} {url}: {error.code} {error.read()[:500]!r}") from None


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Browser]:
    """A headless Chromium session; the browser and its driver stop afterwards."""
    paths = chromium_paths()
    assert paths is not None, "chromium and chromedriver are not installed"
    browser_path, driver_path = paths
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="llmroute-chromium-") as profile:
        driver = subprocess.Popen(
            [driver_path, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if _request("GET", url + "/status")["ready"]:
                        break
                except (OSError, AssertionError):
                    pass
                if time.monotonic() > deadline or driver.poll() is not None:
                    raise AssertionError("chromedriver did not start")
                time.sleep(0.1)
            arguments = [
                "--headless=new",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                f"--window-size={width},{height}",
                f"--user-data-dir={profile}",
                "--no-first-run",
                "--disable-extensions",
            ]
            if os.geteuid() == 0:  # Chromium's sandbox refuses to run as root (CI machines do)
                arguments.append("--no-sandbox")
            capabilities = {
                "capabilities": {
                    "alwaysMatch": {
                        "browserName": "chrome",
                        "goog:chromeOptions": {"binary": browser_path, "args": arguments},
                    }
                }
            }
            session = _request("POST", url + "/session", capabilities)["sessionId"]
            try:
                yield Browser(url, session)
            finally:
                with contextlib.suppress(AssertionError, OSError):
                    _request("DELETE", f"{url}/session/{session}")
        finally:
            driver.terminate()
            try:
                driver.wait(10)
            except subprocess.TimeoutExpired:
                driver.kill()
                driver.wait()


def is_png(data: bytes, path: Path | None = None) -> bool:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return data[:8] == b"\x89PNG\r\n\x1a\n"
