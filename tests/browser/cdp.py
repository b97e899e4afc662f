"""A small Chrome DevTools Protocol client: start Debian's Chromium headless and drive pages.

No WebDriver and no browser download: the system `chromium` is started with
`--remote-debugging-port=0`, its DevTools WebSocket address is read from the
`DevToolsActivePort` file it writes into the fresh profile, and commands go over one
`websockets` connection (flat sessions: one per page). Each `Page` lives in its own browser
context, so two pages are two users with separate storage, as two people on two machines.

Theory of operation: `Browser.command()` sends `{id, method, params, sessionId}` and awaits
the reply with the same id; events (console errors, exceptions) are routed by session to
their `Page`. Tests read the page with `Page.evaluate` and wait with `Page.wait_for`, which
polls a JavaScript expression until it is truthy: the page's own state, as a user sees it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from tests.support.server import UNIT

__all__ = ["Browser", "CdpError", "Page", "chromium_path", "launch_browser"]

# Flags from the machine notes: without the background-networking ones Chromium keeps
# trying to reach Google's hosts from a machine with a closed network.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-dev-shm-usage",
    # Two pages chat at once: neither may be throttled as a background tab.
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    "--password-store=basic",
    "--use-mock-keychain",
    "--remote-debugging-port=0",
    "--window-size=1200,800",
)
STARTUP_TIMEOUT_S = 20.0


class CdpError(RuntimeError):
    """Chromium answered a command with an error, or a page script threw."""


def chromium_path() -> str:
    """The Chromium binary: $GURUKUL_CHROMIUM, else `chromium` on PATH. Fails, never skips."""
    configured = os.environ.get("GURUKUL_CHROMIUM")
    for candidate in (configured, "chromium", "chromium-browser"):
        if candidate and (found := shutil.which(candidate)):
            return found
    raise RuntimeError(
        "Chromium is not installed: the browser tests need Debian's `chromium` "
        "(apt-get install chromium; .ci/services installs it) or GURUKUL_CHROMIUM=/path"
    )


class Browser:
    """One running Chromium and the DevTools connection to it."""

    def __init__(self, process: asyncio.subprocess.Process, connection: ClientConnection) -> None:
        self.process = process
        self._ws = connection
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pages: dict[str, Page] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def command(
        self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        """Send one CDP command and return its result; raises CdpError on an error reply."""
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = future
        await self._ws.send(orjson.dumps(message).decode())
        reply = await asyncio.wait_for(future, 30 * UNIT)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error'].get('message')}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def new_page(self, *, width: int = 1100, height: int = 720) -> Page:
        """A blank page in a browser context of its own (separate cookies and storage)."""
        context = await self.command("Target.createBrowserContext", {"disposeOnDetach": True})
        target = await self.command(
            "Target.createTarget",
            {
                "url": "about:blank",
                "browserContextId": context["browserContextId"],
                "newWindow": True,
                "width": width,
                "height": height,
            },
        )
        attached = await self.command(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"], target["targetId"])
        self._pages[page.session_id] = page
        for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
            await page.command(domain)
        await page.command(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        await page.command("Emulation.setFocusEmulationEnabled", {"enabled": True})
        return page

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.command("Browser.close"), 5)
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
        await self._ws.close()

    async def _read(self) -> None:
        async for raw in self._ws:
            message = orjson.loads(raw)
            if "id" in message:
                future = self._waiting.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
            elif (page := self._pages.get(message.get("sessionId", ""))) is not None:
                page.on_event(message["method"], message.get("params", {}))


class Page:
    """One tab. `goto`, `evaluate`, `wait_for`, type and click, `screenshot`."""

    def __init__(self, browser: Browser, session_id: str, target_id: str) -> None:
        self.browser = browser
        self.session_id = session_id
        self.target_id = target_id
        self.errors: list[str] = []  # console errors, uncaught exceptions, CSP violations
        self._loaded = asyncio.Event()

    async def command(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.command(method, params, self.session_id)

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            self._loaded.set()
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"exception: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(
                "console.error: "
                + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error" and entry.get("source") != "network":
                self.errors.append(f"log: {entry.get('text')}")

    async def goto(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self._loaded.clear()
        result = await self.command("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CdpError(f"navigation to {url} failed: {result['errorText']}")
        await asyncio.wait_for(self._loaded.wait(), 15 * UNIT)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises are awaited)."""
        result = await self.command(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"{expression!r} threw: {text}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0, *, what: str = "") -> Any:
        """Poll `expression` every 50 ms until it is truthy; return its value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout * UNIT
        value: Any = None
        while loop.time() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.05)
        status = await self.evaluate("document.body ? document.body.dataset.connection : null")
        raise AssertionError(
            f"timed out waiting for {what or expression} (last value {value!r}, "
            f"connection {status!r}, page errors {self.errors})"
        )

    async def type_text(self, selector: str, text: str) -> None:
        """Focus `selector` and type `text` as keyboard input (fires `input` events)."""
        await self.evaluate(f"document.querySelector({_js(selector)}).focus()")
        await self.command("Input.insertText", {"text": text})

    async def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            await self.command(
                "Input.dispatchKeyEvent",
                {
                    "type": kind,
                    "key": "Enter",
                    "code": "Enter",
                    "windowsVirtualKeyCode": 13,
                    "nativeVirtualKeyCode": 13,
                },
            )

    async def click(self, selector: str) -> None:
        await self.evaluate(f"document.querySelector({_js(selector)}).click()")

    async def texts(self, selector: str) -> list[str]:
        """The textContent of every element matching `selector`, in document order."""
        value = await self.evaluate(
            f"Array.from(document.querySelectorAll({_js(selector)}), e => e.textContent)"
        )
        return list(value or [])

    async def screenshot(self, path: Path) -> bytes:
        shot = await self.command("Page.captureScreenshot", {"format": "png"})
        data = base64.b64decode(shot["data"])
        await asyncio.to_thread(path.write_bytes, data)
        return data


def _js(value: str) -> str:
    return orjson.dumps(value).decode()


@contextlib.asynccontextmanager
async def launch_browser(extra_flags: Sequence[str] = ()) -> AsyncIterator[Browser]:
    """Start headless Chromium on a fresh profile; close it and remove the profile on exit."""
    binary = chromium_path()
    with tempfile.TemporaryDirectory(
        prefix="gurukul-chromium-", ignore_cleanup_errors=True
    ) as root:
        profile = Path(root) / "profile"
        profile.mkdir()
        log_path = Path(root) / "chromium.log"
        args = [*CHROMIUM_FLAGS, *extra_flags, f"--user-data-dir={profile}", "about:blank"]
        log = await asyncio.to_thread(log_path.open, "wb")
        try:
            # A session of its own: Chromium's helper processes share its process group,
            # so teardown can end exactly the processes this browser started.
            process = await asyncio.create_subprocess_exec(
                binary,
                *args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()  # the child has its own copy of the descriptor
        try:
            ws_url = await _devtools_url(profile, process, log_path)
            connection = await websockets.connect(ws_url, max_size=2**26, ping_interval=None)
            browser = Browser(process, connection)
            try:
                yield browser
            finally:
                await browser.close()
        finally:
            await _stop(process)
            await asyncio.to_thread(_remove_profile, Path(root))


async def _devtools_url(profile: Path, process: asyncio.subprocess.Process, log: Path) -> str:
    """Wait for Chromium to write `DevToolsActivePort` (port, then browser path)."""
    marker = profile / "DevToolsActivePort"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_TIMEOUT_S * UNIT
    while loop.time() < deadline:
        if process.returncode is not None:
            output = (await asyncio.to_thread(log.read_text, errors="replace"))[-2000:]
            raise RuntimeError(f"Chromium exited with {process.returncode}: {output}")
        lines = (await asyncio.to_thread(_read_if_exists, marker)).split()
        if len(lines) >= 2:
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        await asyncio.sleep(0.05)
    raise RuntimeError(f"Chromium did not open its DevTools port within {STARTUP_TIMEOUT_S} s")


async def _stop(process: asyncio.subprocess.Process) -> None:
    """End the browser (it was asked to close already) and any helper it left behind."""
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
    # Helpers (network, storage, renderers) may outlive the browser process by a moment.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _remove_profile(root: Path) -> None:
    """Remove the profile; a helper that was still flushing may recreate a file or two."""
    for _ in range(20):
        try:
            shutil.rmtree(root)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    shutil.rmtree(root, ignore_errors=True)


def _read_if_exists(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
