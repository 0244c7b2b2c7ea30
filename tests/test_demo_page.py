"""The shopper-facing demo page (GET /), driven in a real headless Chromium.

The app runs under a real uvicorn on a loopback port (the browser needs real HTTP) over the
shared tiny index; Playwright drives the page like a shopper: the category filter is filled
from the API, a text search shows image cards with per-stage timings, a card opens the
query->patch attention heatmap and similar products, a category search only shows that
category, a photo search works, and an API error reaches the error banner. A full-page
screenshot of the page with the heatmap open is taken; it is also copied to the path in
FASHIONBERT_DEMO_SCREENSHOT when set (docs/demo.png is made that way), so a test run never
changes tracked files.

Skipped when Chromium or Playwright is missing, unless FASHIONBERT_REQUIRE_BROWSER=1 (CI),
where that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

from search_api.app import create_app
from tests.api_fixtures import ApiIndex, LiveServer, api_index, api_settings, api_tagger  # noqa: F401 - fixture

STATIC = Path(__file__).resolve().parents[1] / "search_api" / "static"
SCREENSHOT_COPY = os.environ.get("FASHIONBERT_DEMO_SCREENSHOT")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 20_000


def _unavailable(reason: str) -> None:
    if os.environ.get("FASHIONBERT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"FASHIONBERT_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _chromium() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    _unavailable("no Chromium at /usr/bin/chromium or on PATH (apt-get install chromium)")
    raise AssertionError("unreachable")


def _sync_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _unavailable(f"the playwright package is not importable ({exc})")
    return sync_playwright


CANVAS_PAINTED = """() => {
  const c = document.getElementById('heatmap');
  if (!c || !c.width || !c.height) return 0;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
  return n;
}"""

IMAGES_LOADED = """(sel) => {
  const imgs = [...document.querySelectorAll(sel)];
  return imgs.length > 0 && imgs.every((img) => img.complete && img.naturalWidth > 0);
}"""


def test_page_source_builds_dom_without_html_parsing() -> None:
    """Catalog strings must never be parsed as HTML; the page needs no network beyond the app."""
    js = (STATIC / "app.js").read_text()
    html = (STATIC / "index.html").read_text()
    css = (STATIC / "style.css").read_text()
    for forbidden in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
        assert forbidden not in js, forbidden
    for text in (js, html, css):
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), "external asset"
        assert "@import" not in text and "fonts.googleapis" not in text
    assert 'src="/static/app.js"' in html and 'href="/static/style.css"' in html


def test_demo_page_in_browser(api_index: ApiIndex, api_tagger: Path, tmp_path: Path) -> None:  # noqa: F811 - fixture
    chromium = _chromium()
    sync_playwright = _sync_playwright()

    with LiveServer(create_app(api_settings(api_index, tagger=api_tagger))) as server:
        api = httpx.Client(base_url=server.url, timeout=30)
        categories = api.get("/api/v1/categories").json()
        version = categories["index_version"]
        too_long = "x" * 300
        expected_error = api.post("/api/v1/search", json={"query": too_long}).json()["error"]["message"]
        assert "256" in expected_error

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page, page_errors = _new_page(browser)
                _drive(page, server.url, categories, version, too_long, expected_error, api, tmp_path)
                assert not page_errors, page_errors
            finally:
                browser.close()


def _new_page(browser):
    """A page with the test's viewport and timeout, collecting uncaught script errors."""
    page = browser.new_page(viewport={"width": 1280, "height": 1200})
    page.set_default_timeout(TIMEOUT_MS)
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    return page, page_errors


def test_demo_page_without_a_tagger_shows_no_tags_and_no_error(api_index: ApiIndex) -> None:  # noqa: F811 - fixture
    chromium = _chromium()
    sync_playwright = _sync_playwright()
    with LiveServer(create_app(api_settings(api_index))) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page, page_errors = _new_page(browser)
            page.goto(server.url + "/?q=dress")
            page.wait_for_selector("#results[data-state=ready]", state="attached")
            with page.expect_response(lambda r: r.url.endswith("/api/v1/tags")) as response:
                page.locator("#results .result-card:has(img.result-image) img.result-image").first.click()
            assert response.value.status == 503
            page.wait_for_selector("#similar .similar-card")
            assert page.is_hidden("#suggested") and page.is_hidden("#error")
            assert not page_errors, page_errors
        finally:
            browser.close()


def _search(page, *, expect_ok: bool = True) -> None:
    """Submit with Enter and wait for this search's answer to be rendered."""
    with page.expect_response(lambda r: "/api/v1/search" in r.url and r.request.method == "POST") as response:
        page.press("#query", "Enter")
    assert response.value.ok is expect_ok, response.value.status
    page.wait_for_selector(f"#results[data-state={'ready' if expect_ok else 'error'}]", state="attached")


def _drive(page, url: str, categories: dict, version: str, too_long: str, expected_error: str,
           api: httpx.Client, tmp_path: Path) -> None:
    # 1. the page loads and fills the category filter from the API
    page.goto(url + "/")
    assert page.title() == "FashionBERT search"
    assert page.get_attribute("#query", "placeholder") and "/" in page.get_attribute("#query", "placeholder")
    page.wait_for_selector("#category[data-loaded=true]", state="attached")
    options = page.eval_on_selector_all("#category option", "os => os.map(o => [o.value, o.textContent])")
    assert options[0] == ["", "All categories"]
    assert [v for v, _ in options[1:]] == [c["name"] for c in categories["categories"]]
    assert page.is_checked("#rerank")
    assert page.is_hidden("#error")

    # 2. a text search with Enter: image cards
    page.select_option("#k", "12")
    page.fill("#query", "dress")
    _search(page)
    cards = page.locator("#results .result-card")
    assert 3 <= cards.count() <= 12
    assert all(pid for pid in cards.evaluate_all("cs => cs.map(c => c.dataset.productId)"))
    for img in page.locator("#results img.result-image").all():  # lazy images load once in view
        img.scroll_into_view_if_needed()
    page.wait_for_function(IMAGES_LOADED, arg="#results img.result-image")
    n_images = page.locator("#results img.result-image").count()
    n_placeholders = page.locator("#results .result-image-placeholder").count()
    assert n_images >= 3 and n_images + n_placeholders == cards.count()
    assert page.locator("#results .result-card .result-title").first.inner_text().strip()
    page.evaluate("window.scrollTo(0, 0)")

    # 3. the status line: count, index version, cache state, per-stage timings
    status = page.inner_text("#status")
    assert f"{cards.count()} results" in status
    assert version in status
    assert re.search(r"\b(fresh|cached)\b", status)
    assert re.search(r"encode [\d.<]+ ms", status) and re.search(r"faiss [\d.<]+ ms", status), status
    assert re.search(r"total [\d.<]+ ms", status), status

    # 4. a card (with a photo) opens the heatmap over the photo and the similar strip
    card = page.locator("#results .result-card:has(img.result-image)").first
    product_id = card.get_attribute("data-product-id")
    card.locator("img.result-image").click()
    page.wait_for_selector("#detail", state="visible")
    assert page.inner_text("#detail-title").strip() == card.locator(".result-title").inner_text().strip()
    page.wait_for_function(f"({CANVAS_PAINTED})() > 1000")
    assert "dress" in page.inner_text("#heatmap-note")
    page.wait_for_selector("#similar .similar-card")
    similar = page.locator("#similar .similar-card").evaluate_all("cs => cs.map(c => c.dataset.productId)")
    assert similar and product_id not in similar
    # the tagger's suggestions for the product, as the API ranks them
    page.wait_for_selector("#suggested-tags li")
    shown_tags = page.locator("#suggested-tags li").evaluate_all("ls => ls.map(l => l.dataset.tag)")
    suggested = api.post("/api/v1/tags", json={"product_id": product_id, "k": 6}).json()["tags"]
    assert shown_tags == [t["tag"] for t in suggested]
    assert "tagger-tiny" in page.inner_text("#suggested-note")
    page.wait_for_function(IMAGES_LOADED, arg="#detail-image, #similar img.similar-image")
    overlay = page.eval_on_selector("#heatmap", "c => { const a = c.getBoundingClientRect(), "
                                    "b = document.getElementById('detail-image').getBoundingClientRect(); "
                                    "return [a.width, a.height, b.width, b.height, a.left - b.left, a.top - b.top]; }")
    assert overlay[0] > 100 and abs(overlay[0] - overlay[2]) < 1 and abs(overlay[1] - overlay[3]) < 1, overlay
    assert abs(overlay[4]) < 1 and abs(overlay[5]) < 1, overlay
    shot = tmp_path / "demo.png"
    page.wait_for_timeout(300)  # the overlay's fade-in
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    if SCREENSHOT_COPY:
        Path(SCREENSHOT_COPY).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT_COPY)
    page.keyboard.press("Escape")
    page.wait_for_selector("#detail", state="hidden")

    # 5. a category filter: every card is of that category
    chosen = max(categories["categories"], key=lambda c: c["count"])["name"]
    page.select_option("#category", chosen)
    _search(page)
    shown = page.locator("#results .result-card .result-category").all_inner_texts()
    assert shown and all(t.strip() == chosen for t in shown), (chosen, shown)

    # a photo alone (upload): results, and the panel says the heatmap needs words
    photo = tmp_path / "shopper.jpg"
    photo.write_bytes(api.get(f"/images/{product_id}/0").content)
    page.select_option("#category", "")
    page.fill("#query", "")
    page.set_input_files("#photo", str(photo))
    page.wait_for_selector("#photo-chip", state="visible")
    with page.expect_response(lambda r: "/api/v1/search/image" in r.url) as response:
        page.click("#search-button")
    assert response.value.ok, response.value.status
    page.wait_for_selector("#results[data-state=ready]", state="attached")
    assert "photo" in page.inner_text("#status")
    page.locator("#results .result-card:has(img.result-image) .why-button").first.click()
    page.wait_for_selector("#detail", state="visible")
    assert "needs a text query" in page.inner_text("#heatmap-note")
    page.click("#photo-clear")
    page.wait_for_selector("#photo-chip", state="hidden")

    # 6. an API error reaches the banner with the server's own message
    page.fill("#query", too_long)
    _search(page, expect_ok=False)
    page.wait_for_selector("#error", state="visible")
    assert page.inner_text("#error-message").strip() == expected_error
    page.fill("#query", "dress")
    _search(page)
    assert page.is_hidden("#error")
