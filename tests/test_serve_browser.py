"""``reslab serve`` end to end in a real headless Chromium: choose an image on the page and
see the predictions and the Grad-CAM overlay appear; a non-image gets a clear refusal.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package; a
missing one fails the test (they are part of the test set-up), it does not skip it.
"""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from reslab.inference.predict import probabilities
from reslab.inference.server import make_server
from reslab.models import create_model

pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1000,800"]
SETUP = "apt-get install -y chromium chromium-driver; pip install selenium"


def chromium_driver():
    chromium = shutil.which("chromium")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.fail(f"headless Chromium is part of the test set-up and is missing ({SETUP})")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(f"the selenium package is part of the test set-up and is missing ({SETUP})")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium  # both paths given: Selenium Manager never looks for a download
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))


@pytest.fixture(scope="module")
def digits_model():
    """An untrained but fixed ResNet-8 for 8x8 grey digits: its answers are whatever
    ``probabilities`` computes in memory, which is what the page must show."""
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10, in_channels=1).eval()
    meta = {"model": "resnet8", "model_options": {}, "num_classes": 10, "in_channels": 1,
            "classes": [f"digit {i}" for i in range(10)], "image_size": [8, 8], "mean": [0.3], "std": [0.4],
            "dataset": "digits", "task": "single-label"}
    return model, meta


@pytest.fixture(scope="module")
def page(digits_model):
    model, meta = digits_model
    server = make_server(model, meta, "127.0.0.1", 0, top_k=3, quiet=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    driver = chromium_driver()
    try:
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        yield driver
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()


def choose_file(driver, path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "file").send_keys(str(path))


def wait_for(driver, condition, timeout: float = 20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d))


def test_page_shows_the_predictions_of_an_uploaded_image(page, digits_model, tmp_path):
    from selenium.webdriver.common.by import By

    model, meta = digits_model
    pixels = np.rint(load_digits().images[0] * 255 / 16).astype(np.uint8)
    Image.fromarray(pixels, "L").save(tmp_path / "digit.png")
    expected = probabilities(model, meta, torch.from_numpy(pixels)[None, None])[0].topk(3)

    wait_for(page, lambda d: d.find_element(By.ID, "model").text.startswith("resnet8"))
    choose_file(page, tmp_path / "digit.png")
    bars = wait_for(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#predictions .bar"))
    names = [bar.find_element(By.CLASS_NAME, "name").text for bar in bars]
    values = [float(bar.find_element(By.CLASS_NAME, "value").text) for bar in bars]
    assert names == [meta["classes"][i] for i in expected.indices.tolist()]
    assert values == pytest.approx(expected.values.tolist(), abs=5e-4)
    assert page.find_element(By.ID, "gradcam").get_attribute("src").startswith("data:image/png;base64,")
    assert page.find_element(By.ID, "message").text.startswith(f"digit.png: {names[0]}")


def test_clicking_a_class_shows_its_grad_cam(page, tmp_path):
    from selenium.webdriver.common.by import By

    # Its own upload: under pytest-xdist this test may get a fresh page of its own.
    pixels = np.rint(load_digits().images[1] * 255 / 16).astype(np.uint8)
    Image.fromarray(pixels, "L").save(tmp_path / "digit1.png")
    choose_file(page, tmp_path / "digit1.png")
    wait_for(page, lambda d: d.find_element(By.ID, "message").text.startswith("digit1.png"))
    second = wait_for(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#predictions .bar"))[1]
    name = second.find_element(By.CLASS_NAME, "name").text
    second.click()
    wait_for(page, lambda d: d.find_element(By.ID, "explained").text == f"Grad-CAM of “{name}”")
    explained = page.find_elements(By.CSS_SELECTOR, "#predictions .bar.explained")
    assert [bar.find_element(By.CLASS_NAME, "name").text for bar in explained] == [name]


def test_page_shows_the_refusal_of_a_file_that_is_not_an_image(page, tmp_path):
    from selenium.webdriver.common.by import By

    (tmp_path / "notes.png").write_text("these are notes, not a picture")
    choose_file(page, tmp_path / "notes.png")
    message = wait_for(page, lambda d: (m := d.find_element(By.ID, "message")).get_attribute("class") == "error" and m)
    assert "refused" in message.text and "not an image" in message.text
    assert not page.find_element(By.ID, "result").is_displayed()
