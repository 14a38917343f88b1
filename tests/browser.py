"""Open an HTML page in headless Chromium with the network cut off and report what a
reader would see wrong: a blank page, an image that does not decode, a script error, or
a request that would leave the machine.

A probe script is put at the top of a copy of the page; on `load` it writes what it
found as JSON into the DOM, which Chromium dumps (`--dump-dom`). Every request Chromium
makes is in its net log: one the page made (its initiator is the page's opaque file
origin, `null`, not Chromium itself, whose own background requests to Google's services
are no fault of the page) for a URL that is not file:, data:, about:, blob: or chrome:
would leave the machine. Proxy and resolver rules send every request nowhere.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:", "chrome:", "chrome-error:")
REQUIRE = "CI_REQUIRE_CHROMIUM"
"""Set to 1 (as .ci/run does) to fail, not skip, where no Chromium is installed."""

PROBE_ID = "tdiag-browser-probe"
PROBE = """<script>
(() => {
  const errors = [];
  window.addEventListener("error", (event) => {
    if (event instanceof ErrorEvent) errors.push(event.message);
  });
  window.addEventListener("load", () => {
    const text = document.body ? document.body.innerText.trim().length : 0;
    const images = Array.from(document.images);
    const broken = [];
    for (const [i, img] of images.entries()) {
      if (!(img.complete && img.naturalWidth > 0)) {
        broken.push(`image ${i + 1} (${(img.getAttribute("src") || "").slice(0, 60)})`);
      }
    }
    const out = document.createElement("pre");
    out.id = "%s";
    out.textContent = JSON.stringify({text, images: images.length, broken, errors});
    document.documentElement.appendChild(out);
  });
})();
</script>
""" % PROBE_ID
PROBE_RESULT = re.compile(r'<pre id="%s">(.*?)</pre>' % PROBE_ID, re.DOTALL)


@dataclass
class PageCheck:
    page: Path
    text_length: int = 0
    images: int = 0
    problems: list[str] = field(default_factory=list)


def chromium() -> str | None:
    """The Chromium binary on PATH (Debian: `chromium`; Ubuntu/others: `chromium-browser`);
    None where there is none, unless CI_REQUIRE_CHROMIUM=1 (as CI sets), where that fails
    the test: CI must check the pages."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None and os.environ.get(REQUIRE) == "1":
        pytest.fail(f"no chromium or chromium-browser on PATH, and {REQUIRE}=1 requires one (apt-get install chromium)")
    return binary


def require_chromium() -> str:
    """The Chromium binary, or skip the calling test."""
    binary = chromium()
    if binary is None:
        pytest.skip("no chromium or chromium-browser on PATH: pages are not checked in a browser")
    return binary


def _with_probe(page: str) -> str:
    """The page's HTML with the probe first in its head (so it sees every script error)."""
    head = re.search(r"<head\b[^>]*>", page, re.IGNORECASE)
    return page[: head.end()] + PROBE + page[head.end():] if head else PROBE + page


def _page_requests(net_log: Path) -> list[str]:
    """The URL of every request the page made: the net log's URL_REQUEST_START_JOB events
    with a document as initiator (Chromium's own requests have "not an origin")."""
    if not net_log.exists():  # Chromium failed to start: check_page says so
        return []
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    starts = [event.get("params", {}) for event in log["events"] if event["type"] == start_job]
    return [params["url"] for params in starts if "url" in params and params.get("initiator") != "not an origin"]


def check_page(page: Path, binary: str, timeout: float = 60) -> PageCheck:
    """Open a copy of `page` in headless Chromium, offline, and say what is wrong with it."""
    result = PageCheck(Path(page))
    with tempfile.TemporaryDirectory(prefix="tdiag-browser-") as tmp:
        folder = Path(tmp)
        copy = folder / Path(page).name
        copy.write_text(_with_probe(Path(page).read_text(encoding="utf-8")), encoding="utf-8")
        net_log = folder / "net-log.json"
        command = [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--disable-extensions", "--no-first-run", "--no-default-browser-check",
            "--metrics-recording-only", "--mute-audio",
            f"--user-data-dir={folder / 'profile'}",
            "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--log-net-log={net_log}", "--net-log-capture-mode=Default",
            "--virtual-time-budget=5000", "--dump-dom", copy.as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        found = PROBE_RESULT.search(done.stdout)
        if done.returncode != 0 or not found:
            result.problems.append(
                f"Chromium did not finish loading the page (exit {done.returncode}): {done.stderr.strip()[-500:]}")
        else:
            probe = json.loads(html.unescape(found.group(1)))
            result.text_length, result.images = probe["text"], probe["images"]
            if probe["text"] == 0:
                result.problems.append("the page is blank: its body has no visible text")
            result.problems += [f"{image} did not load or decode" for image in probe["broken"]]
            result.problems += [f"script error: {error}" for error in probe["errors"]]
        result.problems += [
            f"a request leaves the machine: {url}" for url in dict.fromkeys(_page_requests(net_log))
            if not url.startswith(LOCAL_SCHEMES)
        ]
    return result


def assert_pages_work(pages: list[Path], binary: str) -> None:
    """Fail with every problem of every page."""
    problems = [f"{check.page.name}: {problem}" for check in (check_page(p, binary) for p in pages)
                for problem in check.problems]
    assert not problems, "\n".join(problems)
