"""The README's pictures of the page, taken in Debian's headless Chromium (Playwright's Python package, the
dev extra; no browser is downloaded) from a running `aeknn serve`:

    python docs/screenshot.py --experiment 1 --model relu_mse --out docs/page-map.png
    python docs/screenshot.py --experiment 1 --section charts --out docs/page-charts.png

Each opens the page's deep link for the view asked for, waits until the page, its map and its tables
say they are ready and every digit shown has loaded, and writes the top of the page (or the section's
top) at 1400 x 1000 pixels.
"""

from __future__ import annotations

import argparse
from urllib.parse import urlencode

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
SECTIONS = {"map": None, "charts": "#charts"}  # the page's top, or the first element of a section


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--experiment", type=int, required=True)
    ap.add_argument("--model", default="relu_mse")
    ap.add_argument("--sample", type=int, default=42)
    ap.add_argument("--distance", default="l2", choices=["l1", "l2"])
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--section", default="map", choices=sorted(SECTIONS))
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1000)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    from playwright.sync_api import sync_playwright

    query = urlencode({"experiment": a.experiment, "model": a.model, "sample": a.sample,
                       "distance": a.distance, "k": a.k})
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": a.width, "height": a.height})
        page.goto(f"{a.url}/?{query}")
        for ready in ("body", "#map", "#tables"):
            page.wait_for_selector(f"{ready}[data-ready='1']", timeout=120_000)
        page.wait_for_selector("#nbrs-encoded .thumb", timeout=60_000)
        page.wait_for_function("[...document.querySelectorAll('#explore img')].every(i => i.complete && "
                               "i.naturalWidth > 0)", timeout=60_000)  # the digits drawn, not blank frames
        top = 0
        if SECTIONS[a.section]:
            top = page.eval_on_selector(SECTIONS[a.section], "e => e.getBoundingClientRect().top + window.scrollY")
        page.screenshot(path=a.out, clip={"x": 0, "y": top, "width": a.width, "height": a.height}, full_page=True)
        browser.close()
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
