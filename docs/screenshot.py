"""The README's pictures of the page, taken in Debian's headless Chromium (Playwright's Python package, the
dev extra; no browser is downloaded) from a running `aeknn serve`:

    python docs/screenshot.py --experiment 1 --model relu_mse --out docs/page-map.png
    python docs/screenshot.py --experiment 1 --section charts --out docs/page-charts.png
    python docs/screenshot.py --experiment 1 --compare relu_keep --out docs/review/two-maps.png
    python docs/screenshot.py --experiment 1 --section runs --out docs/review/runs.png
    python docs/screenshot.py --experiment 1 --at 1,2,5 --out docs/review/first.png  (first-1s.png, ...)

Each opens the page's deep link for the view asked for, waits until the page, its map and its tables
say they are ready and the digits' sprite has loaded, and writes the top of the page (or the section's
top) at 1400 x 1000 pixels. With --at it waits for nothing: one picture at each of those seconds after
the page was asked for, as a visitor sees it.
"""

from __future__ import annotations

import argparse
from urllib.parse import urlencode

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
# the page's top, or the first element of a section
SECTIONS = {"map": None, "charts": "#charts", "explore": "#explore", "runs": "#runs-section",
            "heldout": "#chart-heldout"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--experiment", type=int, required=True)
    ap.add_argument("--model", default="relu_mse")
    ap.add_argument("--sample", type=int, default=42)
    ap.add_argument("--distance", default="l2", choices=["l1", "l2"])
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--compare", default=None, help="a second model's map beside the first")
    ap.add_argument("--section", default="map", choices=sorted(SECTIONS))
    ap.add_argument("--at", default=None, help="comma list of seconds: pictures taken then, waiting for nothing")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1000)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    from playwright.sync_api import sync_playwright

    query = urlencode({"experiment": a.experiment, "model": a.model, "sample": a.sample,
                       "distance": a.distance, "k": a.k, **({"compare": a.compare} if a.compare else {})})
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": a.width, "height": a.height})
        if a.at:
            shots = _timed(page, f"{a.url}/?{query}", [float(t) for t in a.at.split(",")], a.out)
            browser.close()
            print("wrote " + ", ".join(shots))
            return
        page.goto(f"{a.url}/?{query}")
        for ready in ("body", "#map", "#tables"):
            page.wait_for_selector(f"{ready}[data-ready='1']", timeout=120_000)
        page.wait_for_selector("#nbrs-encoded .thumb", timeout=60_000)
        if a.compare:
            page.wait_for_selector("#map2[data-ready='1']", timeout=120_000)
        if a.section == "runs":
            page.wait_for_selector("#runs-section[data-ready='1']", timeout=120_000)
        page.wait_for_function("performance.getEntriesByType('resource').some(e => e.name.includes('sprite.png') "
                               "&& e.responseEnd > 0)", timeout=60_000)  # the digits drawn, not blank frames
        page.wait_for_timeout(300)
        top = 0
        if SECTIONS[a.section]:
            top = page.eval_on_selector(SECTIONS[a.section], "e => e.getBoundingClientRect().top + window.scrollY")
        page.screenshot(path=a.out, clip={"x": 0, "y": top, "width": a.width, "height": a.height}, full_page=True)
        browser.close()
    print(f"wrote {a.out}")


def _timed(page, url: str, seconds: list[float], out: str) -> list[str]:
    """The top of the page at each of ``seconds`` after it was asked for."""
    import time

    stem, ext = out.rsplit(".", 1)
    t0 = time.perf_counter()
    page.goto(url, wait_until="commit")
    shots = []
    for t in sorted(seconds):
        page.wait_for_timeout(max(0.0, t - (time.perf_counter() - t0)) * 1000)
        shots.append(f"{stem}-{t:g}s.{ext}")
        page.screenshot(path=shots[-1])
    return shots


if __name__ == "__main__":
    main()
