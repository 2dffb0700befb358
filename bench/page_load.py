"""The web page in headless Chromium: time from navigation to an interactive map, and the frame time
while panning and zooming, over a stored experiment (the full 60,000-sample study for the real figure).

Usage: .venv/bin/python bench/page_load.py DATABASE_URL [--repeat 3]
Needs Debian's /usr/bin/chromium and the dev extra (Playwright's Python package; no browser download).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.services import ApiServer  # noqa: E402

ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--no-first-run", "--disable-extensions"]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("database_url")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--steps", type=int, default=240, help="mouse moves in the panning drag")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    log = Path(tempfile.mkdtemp(prefix="aeknn-page-"))
    api = ApiServer({"AEKNN_DATABASE_URL": a.database_url}, log)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            loads, walls, draws, intervals = [], [], [], []
            n = 0
            for i in range(a.repeat):
                ctx = browser.new_context(viewport={"width": 1400, "height": 1000})  # a cold cache each time
                page = ctx.new_page()
                t0 = time.perf_counter()
                page.goto(api.url + "/")
                page.wait_for_selector("#map[data-ready='1']", timeout=60_000)
                walls.append(time.perf_counter() - t0)
                loads.append(page.evaluate("performance.getEntriesByName('aeknn:map-ready')[0].startTime") / 1000)
                n = page.evaluate("aeknn.codes.n")
                # pan: a long drag across the map, then zoom in and pan again, with a rAF probe running
                page.query_selector("#map").scroll_into_view_if_needed()
                box = page.query_selector("#map").bounding_box()
                page.evaluate("""() => { aeknn.frameTimes.length = 0; window.__raf = [];
                  const tick = (t) => { window.__raf.push(t); if (window.__raf.length < 100000)
                  requestAnimationFrame(tick); }; requestAnimationFrame(tick); }""")
                cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
                page.mouse.move(cx - 150, cy - 150)
                page.mouse.down()
                page.mouse.move(cx + 150, cy + 150, steps=a.steps // 2)
                page.mouse.up()
                page.mouse.move(cx, cy)
                for _ in range(10):
                    page.mouse.wheel(0, -120)
                    page.wait_for_timeout(20)
                page.mouse.down()
                page.mouse.move(cx - 150, cy + 100, steps=a.steps // 2)
                page.mouse.up()
                page.wait_for_timeout(100)
                draws += page.evaluate("aeknn.frameTimes.slice()")
                raf = page.evaluate("window.__raf.slice()")
                intervals += [b - a_ for a_, b in zip(raf, raf[1:], strict=False)]
                ctx.close()
                print(f"run {i + 1}: map interactive {loads[-1]:.3f} s after navigation start "
                      f"({walls[-1]:.3f} s seen by the driver)", flush=True)
            browser.close()
    finally:
        api.stop()
    print(f"\nsamples on the map: {n}; runs: {a.repeat}; Chromium headless, loopback, 1 uvicorn worker")
    print(f"time to an interactive map: median {statistics.median(loads):.3f} s, max {max(loads):.3f} s "
          f"(target: 2 s)")
    print(f"draw time per frame while panning/zooming ({len(draws)} frames): median {statistics.median(draws):.2f} ms,"
          f" p95 {pct(draws, 0.95):.2f} ms, max {max(draws):.2f} ms")
    if intervals:
        print(f"frame interval (requestAnimationFrame) during the drags: median {statistics.median(intervals):.1f} ms,"
              f" p95 {pct(intervals, 0.95):.1f} ms")


if __name__ == "__main__":
    main()
