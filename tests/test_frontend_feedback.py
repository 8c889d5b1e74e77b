"""Feedback in the web app, in Debian's chromium, against a real gateway with keys: a text
classified in the Classify view is corrected with one click and the correction is in S3; the
Review view lists an uncertain answer the predict workers kept, and confirming it stores feedback
and takes it off the list. A stand-in worker answers predictions (testkit.FakeWorker); the
uncertain answer is written by the workers' own ServingTally."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from playwright.sync_api import Browser, Page, sync_playwright

from shared.contracts.keys import ApiKey, key_digest
from shared.feedback import text_sha256
from shared.jobstore import JobStore
from shared.monitoring import ServingTally
from shared.registry import ModelRegistry
from shared.settings import Settings
from shared.storage import s3_client
from shared.text import clean_text
from testkit.gateway import FakeWorker, Gateway, serve
from testkit.job_results import predict_result, uncertain
from tests.test_frontend import (
    CHROMIUM_ARGS,
    DESKTOP,
    PHONE,
    SCREENSHOTS,
    _console,
    chromium_path,
    wait_js,
)
from tests.test_gateway_models import NEWER, register

pytestmark = [pytest.mark.browser]

KEY = "browser-feedback-key"
KEYS = [ApiKey(name="ann", sha256=key_digest(KEY), scopes=("predict", "read"))]
STEP_MS = 20_000


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    return settings.replace(api_keys=KEYS, predict_wait_s=10)


@pytest.fixture
def gateway(keyed: Settings) -> Iterator[Gateway]:
    register(keyed, NEWER, timedelta(days=1))
    ModelRegistry(s3_client(keyed.storage), keyed.storage).promote(NEWER, "first")
    with serve(keyed) as running:
        yield running


@pytest.fixture
def page(gateway: Gateway) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser: Browser = playwright.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS
        )
        context = browser.new_context(viewport=DESKTOP, base_url=gateway.url)
        context.set_default_timeout(STEP_MS)
        page = context.new_page()
        crashes: list[str] = []
        page.on("pageerror", lambda error: crashes.append(str(error)))
        page.on("console", lambda message: _console(message, crashes))
        yield page
        context.close()
        browser.close()
        assert crashes == [], f"the page threw: {crashes}"


def sign_in(page: Page, where: str) -> None:
    page.goto(where)
    page.locator("#signin-dialog").wait_for(state="visible")
    page.fill("#signin-key", KEY)
    page.click("#signin-submit")
    page.locator("#signin-dialog").wait_for(state="hidden")
    wait_js(page, "document.querySelector('#account-name').textContent === 'Signed in as ann'")
    # Six tabs and the account: the top bar still fits the desktop.
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page is {overflow}px wider than the desktop"


def answer_sports(store: JobStore, job_id: str) -> None:
    texts = store.get(job_id).params.texts  # type: ignore[union-attr]
    store.start(job_id)
    store.succeed(job_id, predict_result(NEWER, ("Sports",) * len(texts)))


def fits_a_phone(page: Page, what: str) -> None:
    page.set_viewport_size(PHONE)
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    page.set_viewport_size(DESKTOP)
    assert overflow <= 0, f"{what} is {overflow}px wider than the phone"


def stored(settings: Settings, text: str) -> dict[str, Any] | None:
    """Today's feedback object for the text, as the bucket holds it."""
    day = datetime.now(UTC).date().isoformat()
    key = f"feedback/{day}/{text_sha256(clean_text(text))[:32]}.json"
    s3 = s3_client(settings.storage)
    try:
        body = s3.get_object(Bucket=settings.storage.bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    found: dict[str, Any] = json.loads(body)
    return found


def test_a_classified_text_is_corrected_with_one_click_and_the_correction_is_in_s3(
    page: Page, keyed: Settings
) -> None:
    one = "Stocks rally as oil prices fall"
    sign_in(page, "/#/classify")
    with FakeWorker(keyed, "predict", answer_sports):
        page.fill("#classify-text", one)
        page.click("#classify-submit")
        page.locator("#classify-result .result-one").wait_for()
    assert stored(keyed, one) is None
    result = page.locator("#classify-result")
    result.get_by_role("button", name="✓ Sports").wait_for()
    result.get_by_role("button", name="Business").click()
    wait_js(page, "document.querySelector('#classify-result .feedback').dataset.state === 'saved'")
    assert "Thanks, saved as Business" in result.locator(".feedback-status").inner_text()
    record = stored(keyed, one)
    assert record is not None, "the correction is not in S3"
    assert record["label"] == "Business"
    assert record["given_by"] == "ann"
    assert (record["model_version"], record["predicted"], record["from_job"]) == (
        NEWER,
        "Sports",
        True,
    )
    assert record["agreed"] is False
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "feedback-classify.png", full_page=True)

    # Many texts: each row has its own control, and names its own index in the job.
    many = ["Rebels seize the capital", "Chip doubles battery life", "Cup final tonight"]
    with FakeWorker(keyed, "predict", answer_sports):
        page.fill("#classify-text", "\n".join(many))
        page.click("#classify-submit")
        page.locator("#classify-result table.results").wait_for()
    rows = page.locator("#classify-result table.results tbody tr")
    assert rows.count() == 3
    rows.nth(1).get_by_role("button", name="Sci/Tech").click()
    rows.nth(2).get_by_role("button", name="✓ Sports").click()
    wait_js(
        page,
        "document.querySelectorAll('#classify-result .feedback[data-state=saved]').length === 2",
    )
    corrected, confirmed = stored(keyed, many[1]), stored(keyed, many[2])
    assert corrected is not None
    assert confirmed is not None
    assert (corrected["label"], corrected["index"], corrected["agreed"]) == ("Sci/Tech", 1, False)
    assert (confirmed["label"], confirmed["index"], confirmed["agreed"]) == ("Sports", 2, True)
    assert corrected["job_id"] == confirmed["job_id"]
    assert stored(keyed, many[0]) is None
    fits_a_phone(page, "the Classify view with its feedback controls")


def test_the_review_lists_an_uncertain_answer_and_confirming_it_stores_feedback(
    page: Page, keyed: Settings, redis_client: "redis.Redis[str]"
) -> None:
    texts = ["Talks stall over the budget", "A sure thing", "Markets and matches"]
    answers = [uncertain("World", 0.45), uncertain("Sports", 0.98), uncertain("Business", 0.52)]
    tally = ServingTally(keyed.monitor, keyed.redis.key_prefix)
    tally.add(NEWER, "onnx-int8", answers, [8, 8, 8], 0.01, texts)
    tally.flush(redis_client)

    sign_in(page, "/#/review")
    table = page.locator("#review-table")
    table.wait_for()
    listed = page.evaluate("window.__agnews.review().texts")
    assert sorted(listed) == sorted([texts[0], texts[2]])
    row = table.locator("tbody tr", has_text=texts[0])
    assert "45.0%" in row.inner_text()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "feedback-review.png", full_page=True)
    fits_a_phone(page, "the Review view")
    row.get_by_role("button", name="✓ World").click()
    wait_js(page, "window.__agnews.review().reviewed === 1")
    record = stored(keyed, texts[0])
    assert record is not None, "the confirmation is not in S3"
    assert (record["label"], record["predicted"], record["agreed"]) == ("World", "World", True)
    assert (record["model_version"], record["from_job"], record["given_by"]) == (
        NEWER,
        False,
        "ann",
    )

    # Corrected, the other leaves the list too; a refresh shows nothing left to review.
    table.locator("tbody tr", has_text=texts[2]).get_by_role("button", name="Sci/Tech").click()
    wait_js(page, "window.__agnews.review().reviewed === 2")
    corrected = stored(keyed, texts[2])
    assert corrected is not None
    assert corrected["label"] == "Sci/Tech"
    page.click("#review-refresh")
    page.locator("#review-empty").wait_for()
    assert page.evaluate("window.__agnews.review().texts") == []
