"""The web demo in a real browser: ``python examples/app.py`` on a free port, driven by Playwright on Debian's Chromium.

Playwright's own browser download does not work offline, so the test launches the system Chromium
(``apt-get install -y chromium``; ``.ci/run`` installs it). Where Chromium is not installed the test is skipped, with
that reason. ``REFERENCELCM_DEMO_SCREENSHOT=assets/demo_app.png`` also saves the page after the generation (how the
README's screenshot was made).
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import sync_playwright

from referencelcm.data.synthdance import render_video, sample_video_spec
from referencelcm.demo import FPS

REPOSITORY = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NUM_FRAMES = 4
STARTUP_SECONDS = 240
GENERATION_MILLISECONDS = 240_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def app_url(tmp_path):
    """The demo started the README's way (``python examples/app.py``) on a free local port; its log on failure."""
    port = free_port()
    log_path = tmp_path / "app.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, str(REPOSITORY / "examples" / "app.py"), "--port", str(port)],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"the demo exited with status {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no answer on {url} within {STARTUP_SECONDS} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "Traceback" not in log_path.read_text(), log_path.read_text()[-4000:]


@pytest.fixture
def chromium() -> str:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium is not installed ({CHROMIUM} missing; Debian: apt-get install -y chromium, which "
                    ".ci/run does): the browser test cannot run")
    return CHROMIUM


def test_animate_in_the_browser(chromium, app_url, tmp_path):
    # Another SynthDance person than the demo's, at another size: the reference panel of the grid must be this image.
    upload = tmp_path / "reference.png"
    Image.fromarray(render_video(sample_video_spec(7, 0, 1, 96, split="test"))["images"][0]).save(upload)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(app_url, wait_until="domcontentloaded")
            # The bundled demo's reference is pre-filled; the upload replaces it (wait until it shows).
            shown = "() => document.querySelector('#reference img')?.naturalWidth > 0"
            page.wait_for_function(shown, timeout=60_000)
            prefilled = page.get_attribute("#reference img", "src")
            page.set_input_files("#reference input[type=file]", str(upload))
            replaced = f"() => ({shown})() && document.querySelector('#reference img').src !== {prefilled!r}"
            page.wait_for_function(replaced, timeout=60_000)
            frames = page.locator("#frames input[type=number]")
            frames.fill(str(NUM_FRAMES))
            frames.press("Enter")
            page.click("#generate")

            # The result video: its length, that it plays, and the served file's frames.
            page.wait_for_selector("#result video", timeout=GENERATION_MILLISECONDS)
            played = page.evaluate("""() => new Promise((resolve, reject) => {
                const video = document.querySelector('#result video');
                video.addEventListener('timeupdate', () => resolve({duration: video.duration, src: video.src}),
                                       {once: true});
                video.addEventListener('error', () => reject(new Error('video error ' + video.error.code)));
                video.play().catch(reject);
            })""")
            assert played["duration"] == pytest.approx(NUM_FRAMES / FPS, abs=0.5 / FPS)
            video = iio.imread(page.request.get(played["src"]).body(), extension=".mp4")
            assert video.shape[0] == NUM_FRAMES

            page.wait_for_selector("#grid video", timeout=30_000)
            grid_src = page.get_attribute("#grid video", "src")
            grid = iio.imread(page.request.get(grid_src).body(), extension=".mp4")
            assert grid.shape[0] == NUM_FRAMES
            size = grid.shape[1]  # the panels are square: reference | 4 guidance maps | result
            expected = np.asarray(Image.open(upload).convert("RGB").resize((size, size)), dtype=np.float32)
            assert np.abs(grid[0, :, :size].astype(np.float32) - expected).mean() < 12  # mp4 compression only

            summary = page.inner_text("#summary")
            assert f"{NUM_FRAMES} frames in" in summary and "4 D-UNet evaluations per frame" in summary
            links = page.eval_on_selector_all("#files a[download]", "links => links.map(link => link.href)")
            assert sorted(Path(link).name for link in links) == sorted([Path(played["src"]).name, Path(grid_src).name])
            if os.environ.get("REFERENCELCM_DEMO_SCREENSHOT"):
                page.screenshot(path=os.environ["REFERENCELCM_DEMO_SCREENSHOT"], full_page=True)

            # A bad input shows the package's one-line message, not a traceback.
            seed = page.locator("#seed input")
            seed.fill("-1")
            seed.press("Enter")
            page.click("#generate")
            error = page.get_by_text("`seed` must be an integer from 0 to 4294967295, got -1.")
            error.wait_for(timeout=60_000)
            assert "Traceback" not in page.content()
        finally:
            browser.close()
