"""Open a session report and the cohort dashboard in headless Debian Chromium.

Chromium is driven over the DevTools protocol (a websocket; the `websockets` package comes with
prefect), the pages are served from a loopback http.server. The test checks that there are no
console errors or failed requests, that every image decodes (naturalWidth > 0), that every link
resolves, and saves a full-page screenshot of each page (kept in the pytest tmp dir and, when
GLIAFLOW_SCREENSHOT_DIR is set, copied there).
"""
from __future__ import annotations

import functools
import http.server
import itertools
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")

# these skips fail instead when GLIAFLOW_REQUIRE_SERVICES=1 (tests/run.sh as root; tests/service_policy.py)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed (/usr/bin/chromium); "
                       "tests/run.sh installs it when run as root"),
]


class DevTools:
    """Minimal synchronous Chrome DevTools Protocol client over one browser websocket."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=20)
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30) -> dict:
        i = next(self.ids)
        msg = {"id": i, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        end = time.monotonic() + timeout
        while True:
            data = json.loads(self.ws.recv(timeout=max(0.1, end - time.monotonic())))
            if data.get("id") == i:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result", {})
            self.events.append(data)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        for k, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(k)
        end = time.monotonic() + timeout
        while True:
            data = json.loads(self.ws.recv(timeout=max(0.1, end - time.monotonic())))
            if data.get("method") == method:
                return data
            self.events.append(data)

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    proc = subprocess.Popen(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ws_url = None
    end = time.monotonic() + 60
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        m = re.search(r"DevTools listening on (ws://\S+)", line)
        if m:
            ws_url = m.group(1)
            break
    if ws_url is None:
        proc.kill()
        pytest.fail("chromium did not start its DevTools endpoint")
    # keep draining stderr so chromium never blocks on a full pipe
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    dt = DevTools(ws_url)
    try:
        yield dt
    finally:
        dt.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Two session reports (one complete, one failed half-way) and the dashboard linking them."""
    from gliaflow.pipeline.config import PipelineConfig
    from gliaflow.pipeline.report.dashboard import write_cohort_dashboard
    from gliaflow.pipeline.report.sample import (SAMPLE_SIDECAR, sample_cohort, sample_provenance,
                                                 sample_session, sample_voxelwise)
    from gliaflow.pipeline.report.session_report import write_session_report

    root = tmp_path_factory.mktemp("site")
    cfg = PipelineConfig().model_dump(mode="json")
    outs = sample_session(root / "sub-01" / "pet")
    write_session_report(root / "sub-01" / "sub-01_ses-baseline_report.html", session_id="sub-01_ses-baseline",
                         sidecar=SAMPLE_SIDECAR, outputs=outs, qc={"mean_fd_mm": 0.31}, flags=[],
                         config=cfg, errors=[], provenance=sample_provenance())
    partial = {k: outs[k] for k in ("t1w_preproc", "dseg", "motion_tsv")}
    write_session_report(root / "sub-02" / "sub-02_ses-baseline_report.html", session_id="sub-02_ses-baseline",
                         sidecar=SAMPLE_SIDECAR, outputs=partial, qc={}, flags=["coreg_suspect"],
                         config=cfg, errors=["ImageError: desc-ref_pet.nii.gz: empty image"])
    c = sample_cohort(n_per_group=6)
    sess = c["sessions"]
    sess["report"] = ""
    sess.loc[0, "report"] = "sub-01/sub-01_ses-baseline_report.html"
    sess.loc[1, "report"] = str(root / "sub-02" / "sub-02_ses-baseline_report.html")  # absolute works too
    write_cohort_dashboard(root / "dashboard.html", sessions=sess, regional=c["regional"],
                           stats_regional=c["stats_regional"], stats_correlation=c["stats_correlation"],
                           voxelwise=sample_voxelwise(root / "group"), provenance=sample_provenance(),
                           config=cfg)
    return root


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):  # keep pytest output clean
        pass


_CHECK_JS = """
(async () => {
  const imgs = [...document.images].map(i => ({src: i.src.slice(0, 30), complete: i.complete,
                                              w: i.naturalWidth, h: i.naturalHeight}));
  const hrefs = [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'))
                 .filter(h => !h.startsWith('#'));
  const links = [];
  for (const h of hrefs) {
    const r = await fetch(new URL(h, location.href));
    const body = await r.text();
    links.push({href: h, status: r.status, bytes: body.length});
  }
  const external = [...document.querySelectorAll('[src],[href]')]
      .map(e => e.getAttribute('src') || e.getAttribute('href'))
      .filter(u => /^(https?:)?\\/\\//.test(u));
  return JSON.stringify({imgs, links, external, title: document.title,
                         sections: document.querySelectorAll('section').length,
                         na: [...document.querySelectorAll('.na')].map(e => e.textContent)});
})()
"""


def _open(dt: DevTools, url: str, shot: Path) -> tuple[dict, list[str]]:
    target = dt.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    sid = dt.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        dt.send(f"{domain}.enable", session=sid)
    dt.events.clear()
    dt.send("Emulation.setDeviceMetricsOverride", {"width": 1200, "height": 900, "deviceScaleFactor": 1,
                                                   "mobile": False}, session=sid)
    dt.send("Page.navigate", {"url": url}, session=sid)
    dt.wait_event("Page.loadEventFired", timeout=60)
    res = dt.send("Runtime.evaluate", {"expression": _CHECK_JS, "awaitPromise": True, "returnByValue": True},
                  session=sid, timeout=60)
    info = json.loads(res["result"]["value"])
    metrics = dt.send("Page.getLayoutMetrics", session=sid)
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    height = min(int(size["height"]), 16000)
    png = dt.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                             "clip": {"x": 0, "y": 0, "width": 1200, "height": height,
                                                      "scale": 1}}, session=sid, timeout=60)
    import base64

    shot.write_bytes(base64.b64decode(png["data"]))
    errors = []
    urls = {ev["params"]["requestId"]: ev["params"]["request"]["url"][:80] for ev in dt.events
            if ev.get("method") == "Network.requestWillBeSent"}
    for ev in dt.events:
        p = ev.get("params", {})
        m = ev.get("method")
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                                 for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            errors.append("exception: " + p.get("exceptionDetails", {}).get("text", ""))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            errors.append("log: " + p["entry"].get("text", "") + " " + p["entry"].get("url", ""))
        elif m == "Network.loadingFailed":
            errors.append("network: " + p.get("errorText", "") + " " + urls.get(p.get("requestId"), "?"))
        elif m == "Network.responseReceived" and p.get("response", {}).get("status", 200) >= 400:
            errors.append(f"http {p['response']['status']}: {p['response'].get('url')}")
    dt.send("Target.closeTarget", {"targetId": target})
    return info, errors


def _keep(shot: Path) -> None:
    dest = os.environ.get("GLIAFLOW_SCREENSHOT_DIR")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(dest) / shot.name)


def test_session_report_in_browser(chromium, server, site, tmp_path):
    shot = tmp_path / "session_report.png"
    info, errors = _open(chromium, f"{server}/sub-01/sub-01_ses-baseline_report.html", shot)
    _keep(shot)
    assert errors == []
    assert info["external"] == []
    assert len(info["imgs"]) >= 8  # motion, coreg, seg, atlas, refs, TACs, fits, maps
    bad = [i for i in info["imgs"] if not (i["complete"] and i["w"] > 0 and i["h"] > 0)]
    assert bad == []
    assert info["na"] == []  # every section of a complete session is drawn
    assert shot.stat().st_size > 50_000

    shot2 = tmp_path / "session_report_failed.png"
    info2, errors2 = _open(chromium, f"{server}/sub-02/sub-02_ses-baseline_report.html", shot2)
    _keep(shot2)
    assert errors2 == []
    assert all(i["w"] > 0 for i in info2["imgs"]) and len(info2["imgs"]) >= 2
    assert any("not available" in t for t in info2["na"])


def test_dashboard_in_browser(chromium, server, site, tmp_path):
    shot = tmp_path / "dashboard.png"
    info, errors = _open(chromium, f"{server}/dashboard.html", shot)
    _keep(shot)
    assert errors == []
    assert info["external"] == []
    assert len(info["imgs"]) >= 5  # outliers, effect sizes, genotype x2, scatter, voxelwise
    assert all(i["complete"] and i["w"] > 0 for i in info["imgs"])
    assert len(info["links"]) == 2 and all(
        link["status"] == 200 and link["bytes"] > 1000 for link in info["links"])
    assert shot.stat().st_size > 50_000
