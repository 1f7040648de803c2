"""The web page at ``/`` in a real browser: Debian's Chromium driven by Playwright against a real
server on 127.0.0.1, under the page's own strict Content-Security-Policy (no test bypasses it).

Real images go in through the file picker and the (fake) camera; the checks read back what the
page drew and compare it with what the service answers for the same bytes. Without Chromium these
tests fail and say how to install it: CI installs it (.ci/run), so they always run there.

``python tests/test_web_page.py [OUT.png]`` writes the README's screenshot (docs/web_page.png): a
CamVid photo segmented by the built-in model.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from helpers import CAMVID, REPO, image_bytes, metric, raw_labels, running_server, scene, small_net
from service.backends.pytorch import TorchBackend
from service.web.routes import PAGE_CSP
from service.gpu_metrics import SERIES as GPU_SERIES
from service.web.stats import quantile, snapshot

INSTALL = "apt-get install -y chromium (Debian's package; .ci/run installs it), and pip install -e '.[dev]' for playwright"
FAKE_CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
SCREENSHOT = REPO / "docs" / "web_page.png"
SCREENSHOT_MAX_BYTES = 300_000
CAMVID_PHOTO = "images/val/0016E5_07959.jpg"
TIMEOUT_MS = 60_000  # a shared CI machine: segmentation waits on CPU inference

expect.set_options(timeout=TIMEOUT_MS)


def launch(playwright) -> Browser:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail(f"the web page's tests need Chromium on PATH: {INSTALL}")
    return playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", *FAKE_CAMERA])


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server():
    with running_server(TorchBackend(net=small_net())) as url:
        yield url


@pytest.fixture
def page(browser):
    """A fresh tab (own session storage); fails if the page logs a script error or a CSP violation
    (a refused request's "Failed to load resource" line is the browser's, not the page's)."""
    context = browser.new_context()
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    problems = []
    tab.on("pageerror", lambda error: problems.append(str(error)))
    tab.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource") and problems.append(m.text))
    yield tab
    context.close()
    assert not problems, problems


def open_page(tab: Page, url: str, models: int = 1) -> None:
    tab.goto(url + "/")
    expect(tab.locator("#model option")).to_have_count(models)


def upload(tab: Page, paths: list[Path]) -> None:
    """Choose the files and wait until every card is answered (drawn or failed)."""
    done = tab.locator(".result:not([aria-busy])")
    before = done.count()
    tab.set_input_files("#files", [str(p) for p in paths])
    expect(done).to_have_count(before + len(paths))


def card(tab: Page, name: str):
    return tab.locator(".result").filter(has=tab.locator("h3", has_text=re.compile(f"^{re.escape(name)}$")))


def pixels(tab: Page, canvas) -> np.ndarray:
    """The canvas's RGB pixels as drawn (H x W x 3)."""
    size, data = canvas.evaluate("c => [[c.height, c.width], Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]")
    return np.array(data, np.uint8).reshape(*size, 4)[..., :3]


def legend(result) -> dict[str, tuple[str, float]]:
    """class name -> (swatch colour as CSS computes it, share in percent) from the card's table."""
    rows = result.locator("tbody tr")
    colours = rows.locator(".swatch").evaluate_all("spans => spans.map(s => getComputedStyle(s).backgroundColor)")
    cells = rows.evaluate_all("rows => rows.map(r => [...r.cells].slice(1).map(c => c.textContent))")
    return {name: (colour, float(share.removesuffix(" %"))) for colour, (name, share) in zip(colours, cells)}


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_page_and_its_files_are_served_with_their_types_and_a_strict_policy(server):
    page = httpx.get(server + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == PAGE_CSP
    assert page.headers["x-frame-options"] == "DENY" and page.headers["referrer-policy"] == "no-referrer"
    assert "unsafe" not in PAGE_CSP and "script-src 'self';" in PAGE_CSP and "style-src 'self';" in PAGE_CSP
    html = page.text
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "an inline script: the policy would block it"
    assert not re.search(r"\sstyle=|\son[a-z]+=", html), "an inline style or handler: the policy would block it"
    types = {".js": "text/javascript", ".css": "text/css"}
    names = re.findall(r'(?:src|href)="ui/([\w.]+)"', html)
    for module in (REPO / "service" / "web" / "static").glob("*.js"):
        names += re.findall(r'from "\./([\w.]+)"', module.read_text())  # every module another one imports
    assert {"app.js", "style.css", "api.js", "labels.js", "result.js", "stats.js", "camera.js"} <= set(names)
    for name in set(names):
        r = httpx.get(f"{server}/ui/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"].startswith(types[Path(name).suffix]), name
        assert r.headers["x-content-type-options"] == "nosniff"
    missing = httpx.get(f"{server}/ui/routes.py")  # only the page's own files, never the package's
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_images_render_at_their_size_with_the_models_legend_and_the_servers_shares(server, page, tmp_path):
    png, jpeg = image_bytes(scene(1)), image_bytes(scene(2, (120, 90)), "JPEG", quality=95)
    open_page(page, server)
    upload(page, [write(tmp_path, "street.png", png), write(tmp_path, "road.jpg", jpeg)])
    model = httpx.get(server + "/v1/models").json()["models"][0]
    for name, data, content_type in (("street.png", png, "image/png"), ("road.jpg", jpeg, "image/jpeg")):
        result = card(page, name)
        labels = raw_labels(server, data, content_type)
        canvas = result.locator("canvas")
        assert canvas.evaluate("c => [c.width, c.height]") == [labels.shape[1], labels.shape[0]]
        expect(canvas).to_have_attribute("aria-label", re.compile(f"^Overlay of {re.escape(name)}"))
        expect(result.locator(".meta")).to_have_text(re.compile(r"\d+\.\d ms .*batch of \d+"))
        shown = legend(result)
        assert set(shown) == set(model["classes"])
        counts = np.bincount(labels.ravel(), minlength=len(model["classes"]))
        for class_id, (cls, (r, g, b)) in enumerate(zip(model["classes"], model["palette"])):
            colour, share = shown[cls]
            assert colour == f"rgb({r}, {g}, {b})", cls
            assert abs(share - 100 * counts[class_id] / labels.size) <= 0.05 + 1e-9, cls
        assert abs(sum(share for _, share in shown.values()) - 100) <= 0.05 * len(shown)

    # the views, driven from the keyboard: arrows move through the radio group, Home/End the slider
    result, labels = card(page, "street.png"), raw_labels(server, png, "image/png")
    canvas, palette = result.locator("canvas"), np.array(model["palette"], np.uint8)
    overlay = pixels(page, canvas)
    result.get_by_role("radio", name="Overlay").focus()
    page.keyboard.press("ArrowRight")
    expect(result.get_by_role("radio", name="Mask")).to_be_checked()
    assert (pixels(page, canvas) == palette[labels]).all(), "the mask is not the server's labels in the model's colours"
    expect(result.get_by_label("Mask opacity")).to_be_disabled()
    page.keyboard.press("ArrowRight")
    expect(result.get_by_role("radio", name="Original")).to_be_checked()
    assert (pixels(page, canvas) == scene(1)).all()
    result.get_by_role("radio", name="Overlay").check()
    slider = result.get_by_label("Mask opacity")
    slider.press("End")
    assert (pixels(page, canvas) == palette[labels]).all()
    slider.press("Home")
    assert (pixels(page, canvas) == scene(1)).all()
    blend = overlay.astype(float) - (0.4 * scene(1) + 0.6 * palette[labels])  # the default opacity, 60 %
    assert np.abs(blend).max() <= 2


def test_mask_download_is_the_labels_as_a_palette_png(server, page, tmp_path):
    data = image_bytes(scene(3, (80, 60)))
    open_page(page, server)
    upload(page, [write(tmp_path, "frame.png", data)])
    with page.expect_download() as download:
        card(page, "frame.png").get_by_role("link", name="Download mask (PNG)").click()
    assert download.value.suggested_filename == "frame-mask.png"
    saved = tmp_path / "mask.png"
    download.value.save_as(saved)
    mask = Image.open(saved)
    mask.load()  # a bad CRC or a truncated stream fails here
    assert mask.mode == "P" and mask.size == (80, 60)
    assert (np.asarray(mask) == raw_labels(server, data, "image/png")).all()
    palette = httpx.get(server + "/v1/models").json()["models"][0]["palette"]
    assert mask.getpalette()[: 3 * len(palette)] == [c for rgb in palette for c in rgb]


def test_a_bad_file_shows_the_servers_error_and_the_others_still_render(server, page, tmp_path):
    open_page(page, server)
    upload(page, [write(tmp_path, "notes.png", b"these are my notes, not a picture"), write(tmp_path, "ok.png", image_bytes(scene(4)))])
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("notes.png: not a recognised image")
    expect(alert).to_contain_text("HTTP 415 unsupported_media_type")
    expect(card(page, "notes.png")).to_have_class(re.compile(r"\bfailed\b"))
    expect(card(page, "notes.png").locator("canvas")).to_be_hidden()
    expect(card(page, "ok.png").locator("tbody tr")).to_have_count(11)


def test_with_api_keys_the_page_loads_and_segments_once_the_key_is_entered(page, tmp_path):
    key = "page-test-key"
    with running_server(TorchBackend(net=small_net()), api_key_hashes=[hashlib.sha256(key.encode()).hexdigest()]) as url:
        assert httpx.get(url + "/").status_code == 200 and httpx.get(url + "/ui/app.js").status_code == 200
        assert httpx.get(url + "/v1/models").status_code == 401 and httpx.get(url + "/v1/stats").status_code == 401
        page.goto(url + "/")
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("The served models could not be listed: The server needs a valid API key")
        expect(page.locator("#live-note")).to_contain_text("HTTP 401")
        image = write(tmp_path, "cam.png", image_bytes(scene(5)))
        upload(page, [image])
        expect(alert).to_contain_text('cam.png: The server needs a valid API key: enter it under "API key" above (HTTP 401')

        page.get_by_label("API key").fill("not-the-key")
        page.get_by_role("button", name="Use key").click()
        expect(alert).to_contain_text("the API key is not valid")
        page.get_by_label("API key").fill(key)
        page.get_by_label("API key").press("Enter")
        expect(page.locator("#model option")).to_have_count(1)
        expect(alert).to_be_empty()
        upload(page, [image])
        expect(page.locator(".result:not(.failed) canvas")).to_have_count(1)
        expect(page.locator("#live-latency")).to_have_text(re.compile(r" ms$"))
        assert page.evaluate("() => [sessionStorage.getItem('deeplab-api-key'), localStorage.length]") == [key, 0]
        page.reload()  # the tab keeps the key: no retyping
        expect(page.get_by_label("API key")).to_have_value(key)
        expect(page.locator("#model option")).to_have_count(1)


def test_live_panel_fills_in_from_v1_stats(server, page, tmp_path):
    open_page(page, server)
    before = httpx.get(server + "/v1/stats").json()
    upload(page, [write(tmp_path, "a.png", image_bytes(scene(6))), write(tmp_path, "b.png", image_bytes(scene(7)))])
    after = httpx.get(server + "/v1/stats").json()
    assert after["requests_total"] - before["requests_total"] == 2  # /segment only: not the page's polls
    (model,) = after["models"]
    assert model["name"] == httpx.get(server + "/v1/models").json()["default"]
    assert model["images_total"] - next((m["images_total"] for m in before["models"]), 0) == 2
    text = httpx.get(server + "/metrics").text  # the panel's mean batch is the exported histogram's
    labels = {"model": model["name"], "version": model["version"]}
    assert model["batch_size_mean"] == metric(text, "deeplab_batch_size_sum", **labels) / metric(text, "deeplab_batch_size_count", **labels)
    assert model["queue_depth"] == 0
    assert 0 < after["latency_p50_s"] <= after["latency_p99_s"]
    expect(page.locator("#live-rps")).to_have_text(re.compile(r"^\d+\.\d$"))
    expect(page.locator("#live-latency")).to_have_text(re.compile(r"^\d+\.\d ms / \d+\.\d ms$"))
    expect(page.locator("#live-batch")).to_have_text(re.compile(r"^\d\.\d\d$"))
    expect(page.locator("#live-fps")).to_have_text(re.compile(r"^\d+\.\d fps / (no reference|\d+\.\d fps)"))
    expect(page.locator("#live-queue")).to_have_text("0 images")
    expect(page.locator("#live-gpu")).to_have_text("no GPU" if not after["gpus"] else re.compile(r"^GPU \S+: \d+ % busy"))


def test_latency_quantiles_follow_prometheus_histogram_quantile():
    inf = float("inf")
    assert quantile(0.5, []) is None and quantile(0.5, [(0.1, 0), (inf, 0)]) is None
    buckets = [(0.1, 50), (0.2, 100), (inf, 100)]
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.99, buckets) == pytest.approx(0.1 + 0.1 * 49 / 50)
    assert quantile(0.25, buckets) == pytest.approx(0.05)  # linear from 0 inside the first bucket
    assert quantile(0.99, [(0.1, 1), (inf, 10)]) == 0.1  # in the +Inf bucket: the largest finite bound


def test_v1_stats_reads_the_gpu_series_the_service_exports():
    """No GPU here: the registry gets the GPU collector's own families (service.gpu_metrics.SERIES
    names them), filled with two devices' values, as NVML would have them."""
    values = {"deeplab_gpu_utilization_ratio": 0.25, "deeplab_gpu_memory_used_bytes": 3e9, "deeplab_gpu_memory_total_bytes": 8e10}
    assert set(values) <= set(GPU_SERIES)

    class TwoGpus:
        def collect(self):
            for name, value in values.items():
                family = GaugeMetricFamily(name, GPU_SERIES[name][0], labels=list(GPU_SERIES[name][1]))
                for gpu in ("1", "0"):
                    family.add_metric([gpu], value * (int(gpu) + 1))
                yield family

    registry = CollectorRegistry()
    registry.register(TwoGpus())
    assert snapshot(registry)["gpus"] == [
        {"gpu": "0", "utilization": 0.25, "memory_used_bytes": 3e9, "memory_total_bytes": 8e10},
        {"gpu": "1", "utilization": 0.5, "memory_used_bytes": 6e9, "memory_total_bytes": 1.6e11},
    ]
    assert snapshot(CollectorRegistry())["gpus"] == []


def test_a_camera_frame_is_captured_and_segmented(server, page):
    open_page(page, server)
    page.get_by_role("button", name="Start camera").click()
    expect(page.get_by_role("button", name="Capture frame")).to_be_enabled()
    expect(page.get_by_role("button", name="Capture frame")).to_be_focused()
    size = page.locator("#camera-video").evaluate("v => [v.videoWidth, v.videoHeight]")
    assert min(size) > 0
    page.get_by_role("button", name="Capture frame").click()
    result = card(page, "camera-1.jpg")
    expect(result.locator("tbody tr")).to_have_count(11)
    assert result.locator("canvas").evaluate("c => [c.width, c.height]") == size
    page.get_by_role("button", name="Stop camera").click()
    expect(page.locator("#camera-video")).to_be_hidden()
    assert page.locator("#camera-video").evaluate("v => v.srcObject") is None


def test_usable_on_a_phone_and_every_control_is_labelled(server, browser, tmp_path):
    context = browser.new_context(viewport={"width": 360, "height": 740}, device_scale_factor=2, is_mobile=True, has_touch=True)
    try:
        tab = context.new_page()
        open_page(tab, server)
        upload(tab, [write(tmp_path, "wide.png", image_bytes(scene(8, (400, 100))))])
        assert tab.evaluate("() => document.documentElement.scrollWidth") <= 360, "the page scrolls sideways"
        box = card(tab, "wide.png").locator("canvas").bounding_box()
        assert 0 < box["width"] <= 360 and box["height"] == pytest.approx(box["width"] / 4, abs=1)
        unlabelled = tab.evaluate(
            """() => [...document.querySelectorAll('input, select, button, canvas, video')]
                 .filter(e => !(e.labels?.length || e.getAttribute('aria-label') || e.textContent.trim()))
                 .map(e => e.outerHTML)"""
        )
        assert unlabelled == []
        tab.keyboard.press("Tab")  # the first control, reached from the keyboard, shows its focus
        assert tab.evaluate("() => [document.activeElement.id, getComputedStyle(document.activeElement).outlineStyle]") == ["model", "solid"]
    finally:
        context.close()


def write_screenshot(browser: Browser, photo: Path, out: Path) -> dict[str, float]:
    """The page with ``photo`` segmented by the built-in model, as a small palette PNG at ``out``;
    returns the legend's shares."""
    with running_server(None, max_batch_size=1) as url:
        context = browser.new_context(viewport={"width": 1100, "height": 760})
        try:
            tab = context.new_page()
            open_page(tab, url)
            upload(tab, [photo])
            expect(tab.locator("#live-rps")).to_have_text(re.compile(r"^\d"))
            shot = Image.open(io.BytesIO(tab.screenshot(full_page=True))).convert("RGB")
            shares = {name: share for name, (_, share) in legend(card(tab, photo.name)).items()}
        finally:
            context.close()
    shot.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    return shares


def test_screenshot_of_a_camvid_photo_segmented_by_the_built_in_model(browser, camvid_dir, tmp_path):
    shares = write_screenshot(browser, camvid_dir / CAMVID_PHOTO, tmp_path / "page.png")
    assert max(shares, key=shares.get) in {"road", "building", "sky"} and shares["road"] > 10, shares
    assert (tmp_path / "page.png").stat().st_size < SCREENSHOT_MAX_BYTES
    assert SCREENSHOT.is_file(), f"docs/web_page.png is missing: python tests/test_web_page.py {SCREENSHOT.relative_to(REPO)}"
    assert SCREENSHOT.stat().st_size < SCREENSHOT_MAX_BYTES


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else SCREENSHOT
    with sync_playwright() as pw:
        b = launch(pw)
        print(write_screenshot(b, CAMVID / CAMVID_PHOTO, target))
        b.close()
    print(f"{target}: {target.stat().st_size} bytes")
