"""Check the search page in headless Chromium: open it, type a query, press Enter, wait for the result rows and their
thumbnails, save a screenshot. Outside CI (CI has no Chromium); Debian: ``apt-get install -y chromium``::

    python -m rap_deploy.engines.serving.page_check --url http://127.0.0.1:8080 --query "a red circle moves left" \\
        --out search.png

Chromium runs with a fresh profile, no network services of its own and its DevTools protocol on a loopback port
(``--remote-debugging-port=0``; the port is read from ``DevToolsActivePort``); the script drives it over that
protocol's WebSocket (``aiohttp``, installed with ``tritonclient[http]``). Exit code 0 when results with loaded
thumbnails are on the page, 1 when the page shows none (or an error) or ``--url`` serves another page than the search
page, 2 when Chromium is missing or fails or ``--url`` cannot be opened.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0")
FOCUS_JS = ("(() => { const q = document.getElementById('query'); if (!q || !document.getElementById('status')) "
            "return false; q.focus(); return true; })()")  # false: not the search page
# the page answered (no result rows when the library is empty: then no wait for rows that never come) and every
# thumbnail loaded (the page replaces one that fails with a note)
DONE_JS = ("document.body.dataset.state === 'done' && "
           "[...document.images].every(i => i.complete && i.naturalWidth > 0)")
SUMMARY_JS = ("JSON.stringify({results: document.querySelectorAll('.result').length, "
              "status: document.getElementById('status').textContent, "
              "error: document.getElementById('status').className === 'error', "
              "first: (document.querySelector('.result .vid') || {}).textContent || null})")


class PageCheckError(Exception):
    """Chromium is missing or misbehaved, or the URL cannot be opened (exit 2)."""


class WrongPageError(Exception):
    """The URL serves a page that is not the search page, or the page's script failed (exit 1)."""


class DevTools:
    """A minimal Chrome DevTools Protocol session over one page target's WebSocket."""

    def __init__(self, ws: Any) -> None:
        self.ws, self.next_id, self.events = ws, 0, []

    async def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """Send a command and return its result (events that arrive meanwhile are kept in ``events``)."""
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send_str(json.dumps({"id": my_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.receive(deadline)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise PageCheckError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})
            self.events.append(msg)

    async def wait_event(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for the event ``method`` (also one that arrived earlier)."""
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.receive(deadline)
            if msg.get("method") == method:
                return msg
            self.events.append(msg)

    async def receive(self, deadline: float) -> dict[str, Any]:
        """The next protocol message; :class:`PageCheckError` when Chromium closed the connection."""
        import aiohttp

        msg = await self.ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise PageCheckError(f"Chromium closed its DevTools connection ({msg.type.name})")
        return json.loads(msg.data)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript ``expression`` in the page; :class:`WrongPageError` when it throws."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            reason = (details.get("exception") or {}).get("description") or details.get("text") or "an exception"
            raise WrongPageError(f"the page's script failed: {str(reason).splitlines()[0][:200]}")
        return result.get("result", {}).get("value")

    async def key(self, key: str, code: int, text: str = "") -> None:
        await self.call("Input.dispatchKeyEvent", type="keyDown", key=key, code=key, windowsVirtualKeyCode=code,
                        text=text)
        await self.call("Input.dispatchKeyEvent", type="keyUp", key=key, code=key, windowsVirtualKeyCode=code)


def start_chromium(binary: str, profile: Path, width: int, height: int) -> tuple[subprocess.Popen, int]:
    """Start headless Chromium with a fresh ``profile``; returns the process and its DevTools port."""
    try:
        proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                 f"--window-size={width},{height}", "about:blank"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    except OSError as exc:  # missing, not executable, not a program
        raise PageCheckError(f"cannot start {binary} ({exc.strerror or exc})") from None
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not (port_file.is_file() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise PageCheckError(f"{binary} did not start its DevTools endpoint")
        time.sleep(0.1)
    return proc, int(port_file.read_text().splitlines()[0])


async def check_page(url: str, query: str, out: Path, port: int, width: int, height: int, timeout: float
                     ) -> dict[str, Any]:
    """Open ``url``, type ``query``, press Enter, wait for results, screenshot to ``out``; returns the summary."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        page = next((t for t in targets if t.get("type") == "page"), None)
        if page is None:
            raise PageCheckError("Chromium has no page target")
        async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=64 << 20) as ws:
            dt = DevTools(ws)
            await dt.call("Page.enable")
            await dt.call("Runtime.enable")
            await dt.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                          mobile=False)
            opened = await dt.call("Page.navigate", url=url.rstrip("/") + "/")
            if opened.get("errorText"):
                raise PageCheckError(f"cannot open {url} ({opened['errorText']})")
            await dt.wait_event("Page.loadEventFired", timeout)
            if not await dt.evaluate(FOCUS_JS):
                raise WrongPageError(f"{url} is not the rapdeploy search page (it has no search box); pass the URL "
                                     "that `rapdeploy serve` printed")
            await dt.call("Input.insertText", text=query)
            await dt.key("Enter", 13, "\r")
            deadline = time.monotonic() + timeout
            while not await dt.evaluate(DONE_JS):
                summary = json.loads(await dt.evaluate(SUMMARY_JS))
                if summary["error"] or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            summary = json.loads(await dt.evaluate(SUMMARY_JS))
            shot = await dt.call("Page.captureScreenshot", format="png")
    from rap_deploy.atomic import write_bytes_atomic

    write_bytes_atomic(out, base64.b64decode(shot["data"]))
    return {**summary, "screenshot": str(out), "query": query, "url": url}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry (see the module docstring); returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m rap_deploy.engines.serving.page_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="the running `rapdeploy serve`")
    p.add_argument("--query", default="a red circle moves to the left")
    p.add_argument("--out", type=Path, default=Path("search-page.png"))
    p.add_argument("--chromium", default=None, help="Chromium binary (default: chromium on PATH)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=900)
    p.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_args(argv)
    if not (0 < a.timeout <= 3600) or not (100 <= a.width <= 8192) or not (100 <= a.height <= 8192):
        print(f"error: --timeout must be in (0, 3600] s and --width/--height in [100, 8192] px; got {a.timeout}, "
              f"{a.width}, {a.height}", file=sys.stderr)
        return 2
    binary = a.chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    if not binary:
        print("error: chromium not found; install it (Debian: apt-get install -y chromium) or pass --chromium",
              file=sys.stderr)
        return 2
    try:
        summary = run_check(binary, a)
    except PageCheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WrongPageError as exc:
        print(f"error: page check failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0 if summary["results"] > 0 and not summary["error"] else 1


def run_check(binary: str, a: argparse.Namespace) -> dict[str, Any]:
    """Start Chromium, run :func:`check_page` with the parsed options ``a``, stop Chromium; returns the summary.

    Raises :class:`PageCheckError` (Chromium, the connection or the URL failed) or :class:`WrongPageError`."""
    try:
        import aiohttp
    except ImportError as exc:
        raise PageCheckError(f"the page check needs aiohttp ({exc}); pip install 'tritonclient[http]'") from None
    with tempfile.TemporaryDirectory(prefix="rapdeploy-chromium-") as profile:
        proc, port = start_chromium(binary, Path(profile), a.width, a.height)
        try:
            return asyncio.run(check_page(a.url, a.query, a.out, port, a.width, a.height, a.timeout))
        except (OSError, asyncio.TimeoutError, aiohttp.ClientError) as exc:  # Chromium's endpoint failed
            raise PageCheckError(f"page check failed: {str(exc) or type(exc).__name__}") from None
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


if __name__ == "__main__":
    raise SystemExit(main())
