"""The app in a real browser: ``app.py`` served on 127.0.0.1 and driven by Debian's headless Chromium (Selenium +
chromedriver). A click on the photo must show the focus of ``--focus_xy`` at that pixel and change the render;
"Render full resolution" must offer a PNG of the photo's size and "Focus pull" an animated GIF; a corrupt
upload must show its error and leave the app serving; nothing may be written outside the output folder.
``make test`` installs chromium when missing; in CI (``CI=true``) a missing browser fails the test, elsewhere
it skips with the reason.

The screenshot of the page is written to ``outputs/app_browser_test.png``.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from data.demo import load_motorcycle
from data.focus import focus_from_pixel

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT_S = 120  # generous: two cores shared with other jobs; a click itself takes well under a second


def _require_browser():
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if not missing:
        return
    message = (f"browser test: {', '.join(missing)} missing. Install Debian's packages: "
               "`apt-get install -y chromium chromium-driver` (`make test` does it when run as root)")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """app.py on a free port, its output folder and private temp folder under pytest's tmp_path."""
    _require_browser()
    root = tmp_path_factory.mktemp("app")
    out, private_tmp = root / "out", root / "tmp"
    private_tmp.mkdir()
    port = _free_port()
    env = {**os.environ, "TMPDIR": str(private_tmp), "PYTHONUNBUFFERED": "1"}
    log = (root / "app.log").open("w")
    process = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--output_dir", str(out)],
                               cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"app.py did not start: {(root / 'app.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield {"url": url, "out": out, "tmp": private_tmp, "root": root}
    process.terminate()
    process.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def driver(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1900", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(WAIT_S)
    yield browser
    browser.quit()


def _wait(condition, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _focus(driver) -> str:
    return driver.execute_script("const e = document.querySelector('#focus_value input'); return e ? e.value : '';")


def _text(driver, elem_id: str) -> str:
    return driver.execute_script(f"const e = document.getElementById('{elem_id}'); return e ? e.innerText : '';")


def _render_src(driver) -> str:
    return driver.execute_script("const e = document.querySelector('#render img'); return e ? e.src : '';")


def _fetch_image(url: str) -> np.ndarray:
    from PIL import Image

    with urllib.request.urlopen(url, timeout=30) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"), dtype=np.int16)


def _click_photo(driver, x: int, y: int) -> None:
    """Click pixel (x, y) of the photo, inverting Gradio's mapping (object-fit: contain, centred)."""
    from selenium.webdriver.common.action_chains import ActionChains

    image = driver.find_element("css selector", "#photo img")
    box = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return [r.width, r.height, arguments[0].naturalWidth, arguments[0].naturalHeight];", image)
    width, height, natural_w, natural_h = box
    scale = min(width / natural_w, height / natural_h, 1.0)
    left, top = (width - natural_w * scale) / 2, (height - natural_h * scale) / 2
    dx = round(left + (x + 0.5) * scale - width / 2)
    dy = round(top + (y + 0.5) * scale - height / 2)
    ActionChains(driver).move_to_element_with_offset(image, dx, dy).click().perform()


def _clicked_pixel(driver) -> tuple[int, int]:
    import re

    match = re.search(r"at pixel \((\d+), (\d+)\)", _text(driver, "focus_info"))
    assert match, f"the page does not say which pixel was clicked: {_text(driver, 'focus_info')!r}"
    return int(match.group(1)), int(match.group(2))


@pytest.mark.slow
def test_click_to_focus_and_bad_upload(server, driver, tmp_path):
    _, disparity = load_motorcycle()
    driver.get(server["url"])
    _wait(lambda: _focus(driver) and _render_src(driver), "the first render")
    first_focus, first_src = float(_focus(driver)), _render_src(driver)
    first_render = _fetch_image(first_src)

    # A pixel on the back wall, far (in disparity) from the starting focus on the motorcycle's front.
    target = (60, 60)
    assert abs(focus_from_pixel(disparity, *target) - first_focus) > 0.3  # the click must change something
    _click_photo(driver, *target)
    _wait(lambda: _focus(driver) and float(_focus(driver)) != first_focus and _render_src(driver) != first_src,
          "the focus and the render to change after the click")
    x, y = _clicked_pixel(driver)
    assert abs(x - target[0]) <= 2 and abs(y - target[1]) <= 2, f"clicked {target}, the app focused at {(x, y)}"
    assert float(_focus(driver)) == pytest.approx(focus_from_pixel(disparity, x, y), abs=1e-4)
    second_render = _fetch_image(_render_src(driver))
    assert second_render.shape == first_render.shape
    assert np.abs(second_render - first_render).mean() > 1.0, "the render did not change with the focus"

    # Full resolution (a PNG link of the photo's size) and the focus pull (an animated GIF).
    driver.find_element("css selector", "#full_button").click()
    link = _wait(lambda: driver.execute_script(
        "const a = document.querySelector('#full_file a[href]'); return a ? a.href : '';"), "the full-resolution PNG")
    assert _fetch_image(link).shape == (500, 741, 3)
    driver.find_element("css selector", "#pull_button").click()
    gif = _wait(lambda: driver.execute_script(
        "const e = document.querySelector('#pull_image img'); return e && e.src.endsWith('.gif') ? e.src : '';"),
        "the focus-pull GIF")
    from PIL import Image

    with urllib.request.urlopen(gif, timeout=30) as response, Image.open(io.BytesIO(response.read())) as animation:
        assert animation.n_frames > 2

    # A corrupt photo: a clear message on the page, nothing else replaced.
    corrupt, good_map = tmp_path / "corrupt.png", tmp_path / "map.npy"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    np.save(good_map, disparity[0])
    driver.find_element("css selector", "#upload_photo input[type=file]").send_keys(str(corrupt))
    driver.find_element("css selector", "#upload_disparity input[type=file]").send_keys(str(good_map))
    time.sleep(1.0)  # let both uploads land before the button reads them
    driver.find_element("css selector", "#upload_button").click()
    status = _wait(lambda: "Error" in _text(driver, "status") and _text(driver, "status"), "the upload error")
    assert "corrupt.png" in status and "cannot decode" in status, status

    # The app still serves: the next click focuses again.
    before = float(_focus(driver))
    target = (400, 300)
    _click_photo(driver, *target)
    _wait(lambda: float(_focus(driver) or before) != before, "the focus to change after the bad upload")
    x, y = _clicked_pixel(driver)
    assert float(_focus(driver)) == pytest.approx(focus_from_pixel(disparity, x, y), abs=1e-4)
    assert "Error" not in _text(driver, "status")

    screenshot = REPO / "outputs" / "app_browser_test.png"
    screenshot.parent.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 0
    # Nothing written outside the output folder (the app's own temp folder stays empty).
    assert not any(server["tmp"].iterdir()), list(server["tmp"].iterdir())
    assert (server["out"] / "gradio").is_dir()


def test_a_missing_browser_fails_in_ci_and_skips_elsewhere(monkeypatch, tmp_path):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", str(tmp_path / "no_chromium"))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no_chromium missing.*apt-get install -y chromium chromium-driver"):
        _require_browser()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no_chromium missing"):
        _require_browser()
