"""report.html and the serve page in a real browser: Debian's headless Chromium, driven by
Selenium through Debian's chromedriver (.ci/run installs both).

Screenshots are saved as test artifacts: in $TRANSFERKIT_SCREENSHOTS where set, else in the
test's temporary folder.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from transferkit.cli import app

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow  # a browser and a server process: about 35 s on 2 cores

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("no Chromium and chromedriver on this machine: apt-get install chromium chromium-driver (as .ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("TRANSFERKIT_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained run: a linear head on the digits' raw pixels (seconds)."""
    from transferkit.api import train

    return train("digits", tmp_path_factory.mktemp("browser") / "run", progress=False, strategy="linear", model="pixels").run_dir


def console_errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def save(driver, path: Path) -> Path:
    assert driver.save_screenshot(str(path)), path
    with Image.open(path) as shot:
        assert shot.size[0] >= 1000 and len(shot.getcolors(1 << 24) or []) > 16  # a rendered page, not a blank one
    return path


def test_report_renders_its_images_and_tables_with_no_console_errors(browser, run_dir, screenshots):
    result = CliRunner().invoke(app, ["report", str(run_dir), "--engine", "torch"])
    assert result.exit_code == 0, result.output
    browser.get_log("browser")  # empty the log
    browser.get((run_dir / "report.html").as_uri())
    images = browser.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.getBoundingClientRect().width])")
    assert len(images) > 20 and all(done and natural > 0 and shown > 0 for done, natural, shown in images), images[:5]
    tables = browser.find_elements(By.CSS_SELECTOR, "table.per-class")
    assert len(tables) == 2 and all(len(t.find_elements(By.CSS_SELECTOR, "tbody tr")) == 10 for t in tables)
    assert all(t.is_displayed() for t in tables)
    # Sorting by recall, up then down, on the page itself.
    test_table = tables[1]
    recall_header = test_table.find_elements(By.TAG_NAME, "th")[2]

    def recalls() -> list[float]:
        return [float(td.get_attribute("data-v")) for td in test_table.find_elements(By.CSS_SELECTOR, "tbody td:nth-child(3)")]

    unsorted = recalls()
    recall_header.click()
    assert recalls() == sorted(unsorted)
    recall_header.click()
    assert recalls() == sorted(unsorted, reverse=True)
    assert browser.find_element(By.CSS_SELECTOR, "table.confusion.counts").is_displayed()
    assert console_errors(browser) == []
    browser.execute_script("document.getElementById('mistakes').scrollIntoView()")
    save(browser, screenshots / "report.png")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(run_dir):
    """`transferkit serve RUN` in a subprocess on a free port of 127.0.0.1."""
    import httpx

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "transferkit", "serve", str(run_dir), "--host", "127.0.0.1", "--port", str(port), "--top-k", "3"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "TRANSFERKIT_ENGINE": "torch"})  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while True:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(url + "health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "transferkit serve did not answer in 90 s"
            time.sleep(0.2)
    yield url
    process.terminate()
    output, _ = process.communicate(timeout=30)
    assert "Traceback" not in output, output


def test_an_image_uploaded_through_the_page_shows_its_predicted_class(browser, server, run_dir, tmp_path, screenshots):
    from sklearn.datasets import load_digits

    from transferkit.core.runs import load_run

    digits = load_digits()
    paths = []
    for i in (0, 7):  # real images: two of the embedded handwritten digits, as PNG files
        paths.append(tmp_path / f"digit-{digits.target[i]}.png")
        Image.fromarray(np.round(digits.images[i] * 255 / 16).astype(np.uint8)).resize((64, 64), Image.Resampling.NEAREST).save(paths[-1])
    expected = [r["top"][0]["label"] for r in load_run(run_dir).predict(paths, top_k=1, engine="torch")]
    browser.get_log("browser")
    browser.get(server)
    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))
    results = WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result")) == 2 and d.find_elements(By.CSS_SELECTOR, ".result"))
    shown = [r.find_element(By.CLASS_NAME, "prediction").text for r in results]
    names = [r.find_element(By.CLASS_NAME, "name").text for r in results]
    assert names == [p.name for p in paths] and shown == expected, (names, shown, expected)
    for result in results:
        assert len(result.find_elements(By.CSS_SELECTOR, ".row")) == 3  # --top-k 3 bars
        assert browser.execute_script("return arguments[0].querySelector('img').naturalWidth", result) == 64
    assert browser.find_element(By.ID, "status").text == ""
    assert console_errors(browser) == []
    save(browser, screenshots / "serve.png")


def test_the_page_shows_the_servers_error_for_a_bad_file(browser, server, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    browser.get(server)
    browser.find_element(By.ID, "files").send_keys(str(bad))
    status = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, "#status.error"))
    assert status.text.startswith("error: broken.png: ") and "image" in status.text
    assert browser.find_elements(By.CSS_SELECTOR, ".result") == []
