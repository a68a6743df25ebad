"""Headless Chromium driven over the DevTools protocol: open a page, evaluate JavaScript, move the mouse, take
screenshots. Only what the run page's tests need."""

import base64
import itertools
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-port=0"]  # fmt: skip


class Chromium:
    """One headless browser with one page, as a context manager."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000):
        self.process = subprocess.Popen(
            ["chromium", *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            assert time.time() < deadline and self.process.poll() is None, "chromium did not start"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
        self.url = pages[0]["webSocketDebuggerUrl"]
        self.ids = itertools.count(1)

    def __enter__(self) -> "Chromium":
        self.socket = connect(self.url, max_size=2**28).__enter__()  # websockets wants its connection entered
        return self

    def __exit__(self, *exc: object) -> None:
        self.socket.__exit__(None, None, None)
        self.process.kill()
        self.process.wait()

    def send(self, method: str, **params: Any) -> dict:
        """One protocol command; its result (events that arrive meanwhile are dropped)."""
        call = next(self.ids)
        self.socket.send(json.dumps({"id": call, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=120))
            if message.get("id") == call:
                assert "error" not in message, message["error"]
                return message["result"]

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited if it is a promise)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 60) -> Any:
        """Evaluate ``expression`` until it is truthy; its value."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                value = self.evaluate(expression)
            except AssertionError:  # the page is still loading
                value = None
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expression}")

    def move_mouse(self, x: float, y: float) -> None:
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)

    def screenshot(self, path: Path, selector: str | None = None) -> Path:
        """A PNG of the viewport, or of the element ``selector`` names (scrolled or not)."""
        clip = {}
        if selector is not None:
            box = self.evaluate(
                f"JSON.stringify(document.querySelector({json.dumps(selector)}).getBoundingClientRect())"
            )
            rect = json.loads(box)
            x, y = rect["x"] + self.evaluate("scrollX"), rect["y"] + self.evaluate("scrollY")
            clip = {"clip": {"x": x, "y": y, "width": rect["width"], "height": rect["height"], "scale": 1}}
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True, **clip)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
