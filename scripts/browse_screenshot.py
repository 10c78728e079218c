"""The README's screenshot of ``wdr-pipe browse``: the page over the demo's store, by headless Chromium.

    wdr-pipe demo --out demo-out
    python scripts/browse_screenshot.py demo-out docs/browse.png [--run wdr] [--photo data/images/test/7.jpg]

Starts the page in this process on a free loopback port (as ``wdr-pipe browse --store demo-out/store
--run demo-out/runs/wdr`` does), opens it in Debian's Chromium driven by Selenium, searches by the
photo (a test image's original file: the test split is not in the embeddings the demo computed), and
saves the window. ``--view tags:2,7`` or ``--view image:train/5`` shows another view instead.
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from wdr_pipe.browse.server import passive_openmp  # noqa: E402  (as 'wdr-pipe browse' does, before torch is loaded)

passive_openmp()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo", type=Path, help="the --out folder of 'wdr-pipe demo'")
    ap.add_argument("out", type=Path, help="the PNG to write")
    ap.add_argument("--run", default="wdr", help="the demo's run to browse with")
    ap.add_argument("--photo", default="data/images/test/7.jpg", help="the photo to search by (under DEMO)")
    ap.add_argument("--view", default=None, help="tags:IDS or image:SPLIT/ID instead of the photo search")
    ap.add_argument("--size", default="1280,1000", help="window width,height")
    args = ap.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from wdr_pipe.browse import Background, bind, create_app, open_answers
    
    answers = open_answers(args.demo / "store", str(args.demo / "runs" / args.run))
    with tempfile.TemporaryDirectory() as profile, Background(create_app(answers), bind("127.0.0.1", 0)) as url:
        import requests  # one photo query first: the model's first forward pass is slow, as it would be for a user

        requests.post(url + "api/search/photo", data=(args.demo / args.photo).read_bytes(), timeout=300)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
                    "--hide-scrollbars", f"--window-size={args.size}", f"--user-data-dir={profile}"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            wait = WebDriverWait(driver, 120)
            query = ""
            if args.view and args.view.startswith("tags:"):
                query = "?tags=" + args.view[5:]
            elif args.view and args.view.startswith("image:"):
                split, image_id = args.view[6:].split("/", 1)
                query = f"?image={image_id}&split={split}"
            driver.get(url + query)
            wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
            if not args.view:
                driver.find_element(By.ID, "file").send_keys(str((args.demo / args.photo).resolve()))
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#grid .card") or d.find_elements(By.CSS_SELECTOR, "#view h2"))
            wait.until(lambda d: d.execute_script(
                "return [...document.images].every(i => i.hidden || (i.complete && i.naturalWidth > 0))"))
            time.sleep(0.3)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            png = driver.get_screenshot_as_png()
        finally:
            driver.quit()
    from PIL import Image  # 256 colours: a third of the bytes, the same look for a page of flat colours

    Image.open(io.BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT,
                                                        dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(f"{args.out}: the page over {args.demo / 'store'} with run {args.run}")


if __name__ == "__main__":
    main()
