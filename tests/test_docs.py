"""``/docs``: Swagger UI from files installed with the package, under its own Content-Security-Policy, in a real
headless Chromium (skipped where none is installed): every operation of the OpenAPI document shown, every request
to this origin, no console error and no policy violation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fbml.serving.docs import DOCS_POLICY, OWN, VENDOR
from fbml.serving.server import serving
from litestar.testing import TestClient

from test_app import app_over, models_bundle
from test_page import CAPTURE_VIOLATIONS, CHROMIUM, SECONDS, needs_chromium


@pytest.fixture(scope="module")
def app() -> Any:
    return app_over(models_bundle())


def test_the_docs_files_are_served_with_their_own_policy_and_stay_out_of_the_schema(app: Any) -> None:
    with TestClient(app) as client:
        for path, (_, media_type) in {**OWN, **VENDOR}.items():
            response = client.get(path)
            assert response.status_code == 200 and response.content, path
            assert response.headers["content-type"] == f"{media_type}; charset=utf-8"
            assert response.headers.get_list("content-security-policy") == [DOCS_POLICY]
        page = client.get("/docs").text
        assert "http://" not in page and "https://" not in page and "<script>" not in page
        assert not {path for path in client.get("/schema/openapi.json").json()["paths"] if path.startswith("/docs")}


@pytest.fixture
def base_url(app: Any) -> Iterator[str]:
    with serving(app) as url:
        yield url


@needs_chromium
def test_the_docs_page_shows_every_operation_offline_without_console_errors(base_url: str) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    paths = httpx.get(f"{base_url}/schema/openapi.json").json()["paths"]
    errors: list[str] = []
    requested: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(SECONDS)
            page.on("console", lambda message: message.type == "error" and errors.append(message.text))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requested.append(request.url))
            page.add_init_script(CAPTURE_VIOLATIONS)
            page.goto(f"{base_url}/docs")
            page.wait_for_selector(".opblock")
            shown = page.eval_on_selector_all(".opblock-summary-path", "nodes => nodes.map(node => node.dataset.path || node.textContent)")
            violations = page.evaluate("window.violations")
        finally:
            browser.close()
    assert {path.replace("\u200b", "") for path in shown} == set(paths)
    assert errors == [] and violations == []
    assert requested and all(url.startswith(base_url) or url.startswith("data:") for url in requested), requested
