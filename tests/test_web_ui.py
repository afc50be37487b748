"""The web UI in a real browser: Debian's headless Chromium driven by selenium against the real stack (Redis,
encoder, a denoiser worker, a Celery trainer and the gateway with its HTTP door, all on the tiny model).

Chromium and chromedriver come from Debian's packages (``make chromium``; installed here when missing, like the
Redis server). Screenshots go to the test's tmp folder; ``LONGCAT_UI_SCREENSHOT=path`` also writes the edit
page there (the README's picture is made this way).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from longcat.launch import ROOT, ServiceProcess
from longcat.training.sample_data import write_pairs

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SAMPLE = ROOT / "examples" / "sample.png"


def _ensure_chromium() -> None:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        subprocess.run(["make", "-s", "chromium"], cwd=ROOT, timeout=900, check=False)
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("chromium and chromium-driver could not be installed from Debian's packages (make chromium)")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_path, redis_server):
    root = tmp_path_factory.mktemp("web-ui")
    data, out, adapters, logs = (root / d for d in ("data", "out", "adapters", "logs"))
    for d in (data, out, adapters, logs):
        d.mkdir()
    ns = f"ui-{uuid.uuid4().hex[:6]}"
    shared = ["--redis-url", redis_server.url, "--namespace", ns, "--adapter-dir", str(adapters)]
    roots = ["--data-root", str(data), "--output-root", str(out)]
    encoder = ServiceProcess("encoder", ["--model", tiny_model_path], logs)
    services = [encoder,
                ServiceProcess("denoiser", ["--model", tiny_model_path, *shared, "--encoder", encoder.address], logs),
                ServiceProcess("trainer", ["--model", tiny_model_path, *shared, *roots], logs),
                ServiceProcess("gateway", ["--model", tiny_model_path, *shared, *roots], logs,
                               env={"LONGCAT_API_KEYS": "alice:key-alice"}),
                ServiceProcess("gateway", ["--model", tiny_model_path, *shared, *roots], logs,
                               env={"LONGCAT_API_KEYS": ""})]
    try:
        for svc in services:
            svc.wait_serving(240)
        yield {"url": services[-1].http_url, "keyed_url": services[-2].http_url, "root": root, "adapters": adapters}
    finally:
        for svc in reversed(services):
            svc.stop(signal.SIGTERM, timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    _ensure_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.downloads = downloads
    driver.shots = tmp_path_factory.mktemp("screenshots")
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, timeout: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d))
    except Exception as exc:  # noqa: BLE001 - report what the page showed
        notice = driver.find_element("id", "notice").text
        raise AssertionError(f"timed out waiting for {what}; page notice: {notice!r}; "
                             f"statuses: {_statuses(driver)}") from exc


def _statuses(driver) -> dict:
    return {i: driver.find_element("id", i).text for i in ("edit-status", "train-status", "upload-status")}


def shot(driver, name: str) -> Path:
    path = driver.shots / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def open_tab(driver, stack, tab: str) -> None:
    driver.get("about:blank")  # a fresh page: only the hash would change otherwise, keeping the last test's state
    driver.get(f"{stack['url']}/#{tab}")
    wait(driver, lambda d: d.find_element("id", f"tab-{tab}").is_displayed(), 20, f"the {tab} tab")


def set_value(driver, element_id: str, value: str) -> None:
    el = driver.find_element("id", element_id)
    driver.execute_script("arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'))",
                          el, value)


def run_edit(driver, steps: int = 4, seed: int = 3) -> None:
    driver.find_element("id", "image-input").send_keys(str(SAMPLE))
    wait(driver, lambda d: d.find_element("id", "before-thumb").is_displayed(), 10, "the dropped image")
    set_value(driver, "prompt", "make the sky purple")
    set_value(driver, "size", "64x64")
    set_value(driver, "steps", str(steps))
    set_value(driver, "guidance", "1")
    set_value(driver, "seed", str(seed))
    driver.find_element("id", "run-edit").click()


def test_page_is_offline_and_served_at_root(stack):
    import urllib.request

    html = urllib.request.urlopen(f"{stack['url']}/", timeout=10).read().decode()
    assert "<script src=\"/ui/app.js\">" in html
    for asset in ("app.js", "app.css", "zip.js", "quickstart-config.json"):
        body = urllib.request.urlopen(f"{stack['url']}/ui/{asset}", timeout=10).read().decode()
        assert "http://" not in body and "https://" not in body, f"{asset} reaches for the network"
    static = ROOT / "services" / "gateway" / "http" / "static"
    # The Train tab's prefill is the quickstart's own config, byte for byte.
    assert (static / "quickstart-config.json").read_bytes() == (ROOT / "config" / "config.json.example").read_bytes()
    assert (static / "quickstart-dataloader.json").read_bytes() == \
        (ROOT / "config" / "dataloader.json.example").read_bytes()


def test_edit_with_progress_and_result(stack, browser):
    open_tab(browser, stack, "edit")
    run_edit(browser, steps=6)
    wait(browser, lambda d: d.find_element("id", "compare").is_displayed(), 180, "the edit's result")
    steps_seen = int(browser.find_element("id", "edit-progress").get_attribute("data-steps") or 0)
    assert steps_seen >= 1, "no progress event reached the page"
    assert browser.find_element("id", "preview").get_attribute("data-shown") == "1", "no preview image was shown"
    after = browser.find_element("id", "after").get_attribute("src")
    assert after.startswith("data:image/png;base64,")
    assert browser.find_element("id", "download").get_attribute("href") == after
    assert "64×64" in browser.find_element("id", "edit-status").text
    path = shot(browser, "edit")
    # Drag and drop: a PNG dropped on the drop zone becomes the input image.
    browser.execute_script("""
        const c = Object.assign(document.createElement('canvas'), {width: 32, height: 32});
        c.getContext('2d').fillRect(0, 0, 16, 16);
        c.toBlob((blob) => {
          const dt = new DataTransfer();
          dt.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
          document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
        }, 'image/png');""")
    wait(browser, lambda d: d.execute_script("return document.getElementById('before-thumb').naturalWidth") == 32,
         10, "the dropped image")  # sample.png is wider: only the dropped 32x32 PNG makes this true
    if os.environ.get("LONGCAT_UI_SCREENSHOT"):  # the README's picture: a small palette PNG
        from PIL import Image

        with Image.open(path) as im:
            small = im.convert("RGB").resize((im.width * 3 // 4, im.height * 3 // 4), Image.LANCZOS)
            small.quantize(colors=64).save(os.environ["LONGCAT_UI_SCREENSHOT"], optimize=True)


def test_upload_list_download_delete_adapter(stack, browser, tmp_path, tiny_components):
    from tests.test_engine import _random_lora

    lora = _random_lora(tiny_components.transformer, tmp_path / "lora", seed=9)
    open_tab(browser, stack, "adapters")
    set_value(browser, "upload-name", "ui-upload")
    browser.find_element("id", "upload-file").send_keys(str(lora))
    browser.find_element("id", "run-upload").click()
    wait(browser, lambda d: "uploaded ui-upload" in d.find_element("id", "upload-status").text, 30, "the upload")
    row = wait(browser, lambda d: d.find_elements("css selector", "#adapter-table tr[data-name='ui-upload']"),
               10, "the uploaded adapter's row")[0]
    row.find_element("css selector", "button.download").click()
    got = browser.downloads / "ui-upload.safetensors"
    wait(browser, lambda d: got.is_file() and got.stat().st_size == lora.stat().st_size, 30, "the download")
    assert got.read_bytes() == lora.read_bytes()
    # A file that is no LoRA: refused, the field named on the page.
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    set_value(browser, "upload-name", "ui-bad")
    browser.find_element("id", "upload-file").send_keys(str(bad))
    browser.find_element("id", "run-upload").click()
    wait(browser, lambda d: "is not a safetensors file" in d.find_element("id", "upload-status").text, 30,
         "the refusal")
    shot(browser, "adapters")
    row = browser.find_element("css selector", "#adapter-table tr[data-name='ui-upload']")
    row.find_element("css selector", "button.delete").click()
    browser.switch_to.alert.accept()
    wait(browser, lambda d: not d.find_elements("css selector", "#adapter-table tr[data-name='ui-upload']"), 20,
         "the row to go")
    assert not (stack["adapters"] / "ui-upload").exists()


def test_training_shows_loss_and_validation_then_edit_with_adapter(stack, browser, tmp_path):
    edits, refs = write_pairs(tmp_path / "pairs", count=4, size=(64, 64), seed=0)
    open_tab(browser, stack, "train")
    wait(browser, lambda d: d.find_element("id", "train-config").get_attribute("value"), 10, "the prefilled config")
    config = json.loads(browser.find_element("id", "train-config").get_attribute("value"))
    assert config["lora_rank"] == 16 and config["model_flavour"] == "edit"  # the quickstart's, prefilled
    config.update(max_train_steps=4, validation_steps=2, checkpointing_steps=4, num_validation_images=1,
                  validation_num_inference_steps=2, lr_warmup_steps=1, lora_rank=4, lora_alpha=4,
                  output_dir="runs/ui-lora")
    set_value(browser, "train-config", json.dumps(config, indent=2))
    set_value(browser, "train-name", "ui-lora")
    browser.find_element("id", "edits-dir").send_keys(str(edits))
    browser.find_element("id", "refs-dir").send_keys(str(refs))
    browser.find_element("id", "run-train").click()
    wait(browser, lambda d: int(d.find_element("id", "loss-chart").get_attribute("data-points") or 0) >= 2, 240,
         "the loss chart")
    wait(browser, lambda d: d.find_elements("css selector", "#validation-grid img.validation"), 240,
         "a validation image")
    link = wait(browser, lambda d: (lambda e: e if e.is_displayed() else None)(d.find_element("id", "use-adapter")),
                240, "the training to finish")
    img = browser.find_element("css selector", "#validation-grid img.validation").get_attribute("src")
    assert img.startswith("data:image/png;base64,")
    shot(browser, "train")
    link.click()
    row = wait(browser, lambda d: d.find_elements("css selector", "#adapter-picker .adapter[data-name='ui-lora']"),
               20, "the new adapter in the picker")[0]
    assert row.find_element("css selector", "input[type=checkbox]").is_selected()
    run_edit(browser, steps=2)
    wait(browser, lambda d: d.find_element("id", "compare").is_displayed(), 180, "the edit with the new adapter")
    t0 = time.monotonic()
    open_tab(browser, stack, "jobs")
    wait(browser, lambda d: len(d.find_elements("css selector", "#job-table tbody tr")) >= 2, 20, "the jobs list")
    kinds = {r.find_elements("css selector", "td")[1].text for r in
             browser.find_elements("css selector", "#job-table tbody tr")}
    assert {"edit", "training"} <= kinds, kinds
    assert time.monotonic() - t0 < 30
    # Open the finished edit from the list: its result comes back on the Edit tab.
    edit_row = next(r for r in browser.find_elements("css selector", "#job-table tbody tr")
                    if r.find_elements("css selector", "td")[1].text == "edit")
    edit_row.find_element("css selector", "button.open").click()
    wait(browser, lambda d: d.find_element("id", "compare").is_displayed(), 30, "the opened job's result")
    assert browser.find_element("id", "after").get_attribute("src").startswith("blob:")


def test_training_cancel(stack, browser, tmp_path):
    edits, refs = write_pairs(tmp_path / "pairs", count=2, size=(64, 64), seed=1)
    open_tab(browser, stack, "train")
    wait(browser, lambda d: d.find_element("id", "train-config").get_attribute("value"), 10, "the prefilled config")
    config = json.loads(browser.find_element("id", "train-config").get_attribute("value"))
    config.update(max_train_steps=500, validation_steps=1000, checkpointing_steps=1000, lora_rank=4, lora_alpha=4,
                  output_dir="runs/ui-cancel")
    set_value(browser, "train-config", json.dumps(config))
    set_value(browser, "train-name", "ui-cancel")
    browser.find_element("id", "edits-dir").send_keys(str(edits))
    browser.find_element("id", "refs-dir").send_keys(str(refs))
    browser.find_element("id", "run-train").click()
    wait(browser, lambda d: int(d.find_element("id", "loss-chart").get_attribute("data-points") or 0) >= 1, 240,
         "the first loss point")
    browser.find_element("id", "cancel-train").click()
    wait(browser, lambda d: d.find_element("id", "train-status").text.startswith("cancelled"), 120,
         "the job to be cancelled")
    assert not browser.find_element("id", "use-adapter").is_displayed()


def test_api_key_field_when_keys_are_on(stack, browser, tmp_path, tiny_components):
    from tests.test_engine import _random_lora

    browser.get("about:blank")
    browser.get(f"{stack['keyed_url']}/#adapters")
    box = wait(browser, lambda d: (lambda e: e if e.is_displayed() else None)(d.find_element("id", "key-box")), 20,
               "the API-key field")
    wait(browser, lambda d: "API key" in d.find_element("id", "notice").text
         or d.find_element("id", "notice").text, 20, "the 401 shown")
    key = box.find_element("id", "api-key")
    key.send_keys("key-alice")
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
    lora = _random_lora(tiny_components.transformer, tmp_path / "lora", seed=4)
    set_value(browser, "upload-name", "ui-keyed")
    browser.find_element("id", "upload-file").send_keys(str(lora))
    browser.find_element("id", "run-upload").click()
    row = wait(browser, lambda d: d.find_elements("css selector", "#adapter-table tr[data-name='ui-keyed']"), 30,
               "the keyed upload's row")[0]
    assert "alice" in row.text
    assert browser.execute_script("return localStorage.getItem('longcat.apiKey')") == "key-alice"
    shot(browser, "api-key")
    browser.execute_script("localStorage.removeItem('longcat.apiKey')")
