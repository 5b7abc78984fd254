"""The page at ``/``: its files and headers over HTTP, then the page itself in a real headless Chromium
(Debian's ``chromium``, driven by playwright's Python client) against the app on a loopback port:
a photo and a text in, the category, its top probabilities and the similar listings out, exactly as
the API answers them, with no console error and no Content-Security-Policy violation. The browser
tests are skipped where no Chromium is installed. ``FBML_SCREENSHOT=PATH`` also saves the
screenshot of the filled page there (the README's ``docs/page.png``)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fbml.serving.page import ASSETS, PAGE_POLICY
from fbml.serving.server import serving
from litestar.testing import TestClient

from test_app import PHOTOGRAPHED, app_over, indexed, models_bundle, photo_bytes, photo_id

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")
SECONDS = 60_000  # the longest wait for one thing in the browser, in ms
TITLE = "Red kettle and toaster"
DESCRIPTION = "  A small kettle, a toaster and a lamp for a cafe  "
TEXT = "Red kettle and toaster. A small kettle, a toaster and a lamp for a cafe"
"""What the page sends: the title and description, trimmed, joined by '. '."""
SIMILAR = 5
CAPTURE_VIOLATIONS = """
window.violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.violations.push(`${event.violatedDirective} ${event.blockedURI}`);
});
"""


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The app over the test bundle, serving the photographed products' photos."""
    folder = tmp_path_factory.mktemp("photos")
    for product in range(PHOTOGRAPHED):
        (folder / f"{photo_id(product)}.jpg").write_bytes(photo_bytes(300 + product, size=(64, 48)))
    return app_over(indexed(models_bundle()), photo_dir=folder)


@pytest.fixture(scope="module")
def base_url(app: Any) -> Iterator[str]:
    with serving(app) as url:
        yield url


def test_the_page_and_its_assets_are_served_with_their_own_policy_only(app: Any) -> None:
    with TestClient(app) as client:
        for path, (name, media_type) in ASSETS.items():
            response = client.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"] == f"{media_type}; charset=utf-8"
            assert response.headers.get_list("content-security-policy") == [PAGE_POLICY], path
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.content == (Path(__file__).parents[1] / "fbml/serving/static" / name).read_bytes()
        page = client.get("/").text
        assert client.get("/health").headers.get_list("content-security-policy") == ["default-src 'none'; frame-ancestors 'none'"]
    assert not re.search(r"<script(?![^>]*\bsrc=)|\son\w+=|\sstyle=|https?://", page), "inline code or another origin"
    for field in ("photo", "title", "description"):
        assert f'<label for="{field}">' in page and f'id="{field}"' in page


@pytest.fixture
def browser_page(base_url: str) -> Iterator[tuple[Any, list[str]]]:
    """A Chromium page with the app's page open and ready, and the console errors it logs."""
    sync_api = pytest.importorskip("playwright.sync_api")
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 960, "height": 1100})
            page.set_default_timeout(SECONDS)
            page.on("console", lambda message: message.type == "error" and errors.append(message.text))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.add_init_script(CAPTURE_VIOLATIONS)
            response = page.goto(f"{base_url}/")
            assert response is not None and response.ok
            sync_api.expect(page.locator("#status")).to_have_text(
                "Serving combined, image, text over 3 categories, 12 listings indexed.", timeout=SECONDS
            )
            yield page, errors
            assert page.evaluate("window.violations") == []
            assert errors == []
        finally:
            browser.close()


@needs_chromium
def test_a_photo_and_text_get_the_category_probabilities_and_similar_listings(
    browser_page: tuple[Any, list[str]], base_url: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page, _ = browser_page
    photo = photo_bytes(7, size=(160, 120))
    page.get_by_label("Photo").set_input_files({"name": "photo.jpg", "mimeType": "image/jpeg", "buffer": photo})
    expect(page.locator("#preview")).to_be_visible()
    page.get_by_label("Title").fill(TITLE)
    page.get_by_label("Description").fill(DESCRIPTION)
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Predict and find similar listings")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#results")).to_be_visible(timeout=SECONDS)
    expect(page.locator("#similar tbody tr")).to_have_count(SIMILAR, timeout=SECONDS)

    files = {"image": ("photo.jpg", photo, "image/jpeg")}
    prediction = httpx.post(f"{base_url}/predict/combined", files=files, data={"text": TEXT}).json()
    similar = httpx.post(f"{base_url}/recommend", files=files, data={"text": TEXT, "k": str(SIMILAR)}).json()["results"]
    assert page.locator("#category").inner_text() == prediction["category"]
    assert page.locator("#predicted-by").inner_text() == "by /predict/combined"
    rows = page.locator("#probabilities tbody tr")
    assert rows.locator("td:first-child").all_inner_texts() == [top["category"] for top in prediction["top"]]
    meters = rows.locator("meter").evaluate_all("meters => meters.map((meter) => meter.value)")
    assert meters == pytest.approx([top["probability"] for top in prediction["top"]], abs=1e-12)
    for shown, top in zip(rows.locator("td:last-child").all_inner_texts(), prediction["top"], strict=True):
        assert float(shown.strip().rstrip("%")) == pytest.approx(100 * top["probability"], abs=0.051)
    cells = [row.locator("td").all_inner_texts() for row in page.locator("#similar tbody tr").all()]
    assert [cell[1:4] for cell in cells] == [[item["name"], item["category_path"], f"£{item['price']:,.2f}"] for item in similar]
    assert [float(cell[4]) for cell in cells] == pytest.approx([item["score"] for item in similar], abs=5e-4)
    for row, item in zip(page.locator("#similar tbody tr").all(), similar, strict=True):
        thumbnails = row.locator("td:first-child img")
        if not item["photos"]:
            expect(thumbnails).to_have_count(0)
            continue
        expect(thumbnails).to_have_attribute("src", f"/photos/{item['photos'][0]}")
        expect(thumbnails).to_have_js_property("complete", True)
        assert thumbnails.evaluate("image => image.naturalWidth") == 64  # the served photo, decoded
    assert any(item["photos"] for item in similar)
    assert page.locator("#error").is_hidden()
    assert page.locator("#preview").evaluate("image => image.naturalWidth") == 160

    screenshot = tmp_path / "page.png"
    page.screenshot(path=screenshot, full_page=True)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("FBML_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["FBML_SCREENSHOT"])


@needs_chromium
def test_text_alone_is_predicted_by_the_text_endpoint_and_refusals_are_shown(
    browser_page: tuple[Any, list[str]], base_url: str
) -> None:
    from playwright.sync_api import expect

    page, errors = browser_page
    page.get_by_label("Title").fill(TITLE)
    page.get_by_label("Title").press("Enter")
    expect(page.locator("#predicted-by")).to_have_text("by /predict/text", timeout=SECONDS)
    expected = httpx.post(f"{base_url}/predict/text", data={"text": TITLE}).json()
    assert page.locator("#category").inner_text() == expected["category"]

    not_a_photo = b"not a photo"
    page.get_by_label("Photo").set_input_files({"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": not_a_photo})
    page.get_by_role("button", name="Predict and find similar listings").click()
    refusal = httpx.post(f"{base_url}/predict/combined", files={"image": ("notes.jpg", not_a_photo)}, data={"text": TITLE})
    assert refusal.status_code == 422
    expect(page.get_by_role("alert")).to_have_text(refusal.json()["detail"], timeout=SECONDS)
    # The browser logs each refused request as a console error: expected here, and only those.
    assert errors and all("status of 422" in error for error in errors), errors
    errors.clear()
