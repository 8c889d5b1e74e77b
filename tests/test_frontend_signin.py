"""The browser app against a gateway with API keys on, in Debian's chromium: the page asks for a
key once, then works by its session cookie (API calls and the event stream), and signs out.

The gateway is real; a stand-in worker answers predictions and the test plays a pipeline job's
events through the job store, so this runs in seconds, without a model."""

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from shared.contracts.keys import ApiKey, key_digest
from shared.jobstore import JobStore
from shared.registry import ModelRegistry
from shared.settings import Settings
from shared.storage import s3_client
from testkit.gateway import FakeWorker, Gateway, serve
from testkit.job_results import predict_result, train_result
from tests.test_frontend import CHROMIUM_ARGS, DESKTOP, _console, chromium_path, wait_js
from tests.test_gateway_models import NEWER, OLDER, register

pytestmark = [pytest.mark.browser]

ADMIN_KEY = "browser-admin-key"
KEYS = [ApiKey(name="ops", sha256=key_digest(ADMIN_KEY), scopes=("admin",))]
STEP_MS = 20_000


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    return settings.replace(api_keys=KEYS, predict_wait_s=10)


@pytest.fixture
def gateway(keyed: Settings) -> Iterator[Gateway]:
    register(keyed, OLDER, timedelta(days=2))
    register(keyed, NEWER, timedelta(days=1))
    ModelRegistry(s3_client(keyed.storage), keyed.storage).promote(NEWER, "first")
    with serve(keyed) as running:
        yield running


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, gateway: Gateway) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP, base_url=gateway.url)
    context.set_default_timeout(STEP_MS)
    page = context.new_page()
    crashes: list[str] = []
    page.on("pageerror", lambda error: crashes.append(str(error)))
    page.on("console", lambda message: _console(message, crashes))
    yield page
    context.close()
    assert crashes == [], f"the page threw: {crashes}"


def answer(store: JobStore, job_id: str) -> None:
    texts = store.get(job_id).params.texts  # type: ignore[union-attr]
    store.start(job_id)
    store.succeed(job_id, predict_result(NEWER, ("Business",) * len(texts)))


def session_cookie(page: Page) -> dict[str, Any]:
    cookies = [c for c in page.context.cookies() if c["name"] == "agnews_session"]
    assert len(cookies) <= 1
    return dict(cookies[0]) if cookies else {}


def test_sign_in_classify_watch_promote_sign_out(
    page: Page, gateway: Gateway, keyed: Settings
) -> None:
    page.goto("/")
    dialog = page.locator("#signin-dialog")
    dialog.wait_for(state="visible")
    page.fill("#signin-key", "not-a-key")
    page.click("#signin-submit")
    wait_js(page, "document.querySelector('#signin-error').textContent.includes('not valid')")
    page.fill("#signin-key", ADMIN_KEY)
    page.click("#signin-submit")
    dialog.wait_for(state="hidden")
    wait_js(page, "document.querySelector('#account-name').textContent === 'Signed in as ops'")
    cookie = session_cookie(page)
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert ADMIN_KEY not in cookie["value"]
    assert page.evaluate("document.cookie") == ""
    wait_js(page, f"document.querySelector('#serving').textContent.includes('{NEWER}')")

    # Classify, by cookie.
    with FakeWorker(keyed, "predict", answer):
        page.fill("#classify-text", "Stocks rally as oil prices fall\nMarkets close higher")
        page.click("#classify-submit")
        page.locator("#classify-result table.results").wait_for()
    assert page.locator("#classify-result table.results tbody tr").count() == 2

    # A job's live progress through the event stream, by cookie.
    store = JobStore.from_settings(keyed)
    created = httpx.post(
        f"{gateway.url}/v1/jobs",
        json={"type": "pipeline", "dataset": "incoming/browser/archive.zip"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    page.goto(f"/#/jobs/{job_id}")
    wait_js(page, "window.__agnews.job() && window.__agnews.job().connection === 'live'")
    store.start(job_id)
    for step in (1, 2, 3):
        store.progress(job_id, {"stage": "train", "step": step, "total": 3, "loss": 1.5 / step})
    wait_js(page, "window.__agnews.job().lossPoints === 3")
    assert page.evaluate("window.__agnews.job().status") == "running"
    store.succeed(job_id, train_result(NEWER))
    wait_js(page, "window.__agnews.job().ended")
    assert page.evaluate("window.__agnews.job().status") == "succeeded"

    # Promote an older version.
    page.goto("/#/models")
    page.get_by_role("button", name=f"Promote {OLDER}").click()
    page.fill("#promote-reason", "promoted by a signed-in browser")
    page.click("#promote-confirm")
    wait_js(page, f"document.querySelector('#serving').textContent.includes('{OLDER}')")
    pointer = ModelRegistry(s3_client(keyed.storage), keyed.storage).production()
    assert pointer is not None
    assert pointer.version == OLDER
    assert pointer.reason == "promoted by a signed-in browser"

    # Sign out: the cookie is gone and the page asks for a key again.
    page.click("#signout")
    dialog.wait_for(state="visible")
    assert session_cookie(page) == {}
    deadline = time.monotonic() + 5
    while page.locator("#account").is_visible() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not page.locator("#account").is_visible()
    store.redis.close()
