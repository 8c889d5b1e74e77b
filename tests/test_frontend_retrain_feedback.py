"""Retraining on feedback from the web app, in Debian's chromium, against a real gateway with keys:
the Retrain view counts the texts given feedback and, for an admin key, starts a with_feedback
pipeline with one click and follows it in the job view an upload uses; a key without the admin
scope gets no button, only a note that says why. The refusals and a job that fails with
`no_feedback` are told in words.

The evaluate worker's part is played in the test (testkit.FakeWorker): the ingest stage's events
as workers/tasks.py and pipeline/stages.py (ingest_with_feedback) send them."""

from collections.abc import Iterator

import httpx
import pytest
import redis
from playwright.sync_api import Browser, Page, expect, sync_playwright

from pipeline.feedback_dataset import FeedbackOrigin
from shared.contracts.errors import NoFeedback, error_info
from shared.contracts.feedback import Feedback
from shared.contracts.jobs import EventType, Job, JobType, PipelineParams
from shared.contracts.keys import ApiKey, key_digest
from shared.contracts.stages import ROUTES, TRAIN
from shared.contracts.times import utcnow
from shared.feedback import FeedbackStore, text_sha256
from shared.jobstore import JobStore
from shared.settings import Settings
from shared.text import clean_text
from testkit.gateway import FakeWorker, Gateway, broker_messages, serve, wait_until
from tests.test_frontend import (
    CHROMIUM_ARGS,
    DESKTOP,
    PHONE,
    SCREENSHOTS,
    _console,
    chromium_path,
    wait_js,
)
from workers.reporting import JobReporter

pytestmark = [pytest.mark.browser]

ADMIN = "browser-retrain-admin-key"
READER = "browser-retrain-reader-key"
KEYS = [
    ApiKey(name="ada", sha256=key_digest(ADMIN), scopes=("admin",)),
    ApiKey(name="rob", sha256=key_digest(READER), scopes=("predict", "read")),
]
STEP_MS = 20_000
BASE = "ab" * 32
MADE = "cd" * 32
CORRECTIONS = [
    ("Stocks rally as oil prices fall", "Business", "World"),
    ("Rebels seize the capital", "World", "World"),
    ("Chip doubles battery life", "Sci/Tech", "Business"),
]


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    return settings.replace(api_keys=KEYS)


@pytest.fixture
def gateway(keyed: Settings) -> Iterator[Gateway]:
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


@pytest.fixture
def jobs(keyed: Settings) -> Iterator[JobStore]:
    store = JobStore.from_settings(keyed)
    yield store
    store.redis.close()


def give_feedback(settings: Settings, corrections: list[tuple[str, str, str]]) -> None:
    """Feedback records in S3, as POST /v1/feedback stores them: (text, label, predicted)."""
    store = FeedbackStore.from_settings(settings.storage)
    for text, label, predicted in corrections:
        cleaned = clean_text(text)
        store.put(
            Feedback(
                text=cleaned,
                text_sha256=text_sha256(cleaned),
                label=label,  # type: ignore[arg-type]
                given_by="ann",
                model_version=None,
                predicted=predicted,  # type: ignore[arg-type]
                agreed=label == predicted,
                from_job=False,
                at=utcnow(),
            )
        )


def sign_in(page: Page, key: str, name: str) -> None:
    """Opens the Retrain view; its feedback count asks for a key."""
    page.goto("/#/retrain")
    page.locator("#signin-dialog").wait_for(state="visible")
    page.fill("#signin-key", key)
    page.click("#signin-submit")
    page.locator("#signin-dialog").wait_for(state="hidden")
    wait_js(page, f"document.querySelector('#account-name').textContent === 'Signed in as {name}'")


def counted(page: Page) -> str:
    """The count the view shows, once it has one."""
    wait_js(page, "document.querySelector('#feedback-count').dataset.count !== ''")
    return page.locator("#feedback-count").inner_text()


def pipelines(jobs: JobStore) -> list[Job]:
    return jobs.recent(JobType.pipeline)


def ingest_log(origin: FeedbackOrigin) -> dict[str, object]:
    """The log event pipeline/stages.py's ingest_with_feedback sends."""
    return {
        "message": f"dataset {origin.base_sha256[:12]} with {origin.feedback_rows} feedback "
        f"rows: {origin.relabelled} of its rows relabelled, {origin.confirmed} confirmed, "
        f"{origin.left_out} left out (texts of the holdout or test.csv)",
        **origin.model_dump(mode="json"),
    }


def ingest_with_feedback(store: JobStore, job_id: str) -> None:
    """The ingest stage of a with_feedback pipeline that adds the three texts, then training
    starting (and left running)."""
    reporter = JobReporter(store, job_id)
    store.start(job_id)
    reporter.stage("ingest", "started", dataset=None, with_feedback=True)
    origin = FeedbackOrigin(
        base_sha256=BASE,
        first_line=121,
        feedback_rows=3,
        relabelled=1,
        confirmed=1,
        left_out=0,
        newest_feedback_at=utcnow(),
    )
    reporter.event(EventType.log, ingest_log(origin))
    reporter.stage("ingest", "finished", dataset_sha256=MADE, seconds=1.5)
    reporter.stage("train", "started")


def all_left_out(store: JobStore, job_id: str) -> None:
    """The ingest stage finding only feedback on holdout texts: it fails with no_feedback."""
    reporter = JobReporter(store, job_id)
    store.start(job_id)
    reporter.stage("ingest", "started", dataset=None, with_feedback=True)
    origin = FeedbackOrigin(
        base_sha256=BASE,
        first_line=121,
        feedback_rows=0,
        relabelled=0,
        confirmed=0,
        left_out=2,
        newest_feedback_at=utcnow(),
    )
    reporter.event(EventType.log, ingest_log(origin))
    store.fail(
        job_id,
        error_info(
            NoFeedback(
                "all 2 feedback texts are in the promotion holdout or test.csv, which training "
                "must not see: there is nothing to add to the dataset"
            )
        ),
    )


def test_an_admin_retrains_with_feedback_and_follows_the_pipeline(
    page: Page, keyed: Settings, jobs: JobStore
) -> None:
    give_feedback(keyed, CORRECTIONS)
    sign_in(page, ADMIN, "ada")
    assert counted(page) == "3 texts have feedback."
    button = page.locator("#feedback-retrain-button")
    expect(button).to_be_visible()
    expect(button).to_be_enabled()
    expect(page.locator("#feedback-retrain-admin")).to_be_hidden()
    assert pipelines(jobs) == []

    button.click()
    page.locator("#retrain-job .job").wait_for()
    wait_js(page, "window.__agnews.job()?.jobId != null")
    (job,) = pipelines(jobs)
    assert job.params == PipelineParams(with_feedback=True)
    assert page.evaluate("window.__agnews.job().jobId") == job.id
    assert ("agnews.ingest", [job.id]) in broker_messages(keyed, "evaluate")
    status = page.locator("#feedback-retrain-status")
    expect(status).to_contain_text(f"Pipeline job {job.id} started with feedback")
    header = page.locator("#retrain-job .job-header")
    expect(header).to_contain_text("the dataset accepted last plus feedback")
    ingest = page.locator("#retrain-job .step[data-stage=ingest] .step-state")
    expect(ingest).to_have_text("waiting · with feedback")

    # The worker's ingest: its log names the feedback rows, and the stage's done note shows them.
    with FakeWorker(keyed, "evaluate", ingest_with_feedback) as worker:
        wait_until(lambda: job.id in worker.handled)
    expect(ingest).to_have_text("3 feedback rows · 2 s")
    expect(ingest).to_have_attribute("title", f"dataset {MADE[:8]} · 3 feedback rows · 2 s")
    assert page.evaluate("window.__agnews.job().feedbackRows") == 3
    expect(page.locator("#retrain-job .step[data-stage=train]")).to_have_attribute(
        "data-state", "running"
    )
    assert len(pipelines(jobs)) == 1, "one click made more than one pipeline"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "retrain-feedback.png", full_page=True)
    page.set_viewport_size(PHONE)
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the Retrain view is {overflow}px wider than the phone"

    # The Jobs list tells the pipeline apart from an upload's.
    page.set_viewport_size(DESKTOP)
    page.goto("/#/jobs")
    row = page.locator(f'tr:has(a[href="#/jobs/{job.id}"])')
    expect(row).to_contain_text("the dataset accepted last plus feedback")


def test_refusals_and_a_pipeline_without_usable_feedback_are_told(
    page: Page, keyed: Settings, jobs: JobStore, redis_client: "redis.Redis[str]"
) -> None:
    sign_in(page, ADMIN, "ada")
    assert counted(page).startswith("No text has feedback yet")
    expect(page.locator("#feedback-retrain-button")).to_be_disabled()

    # Two texts given feedback: back in the view, they are counted.
    give_feedback(keyed, CORRECTIONS[:2])
    page.goto("/#/jobs")
    page.goto("/#/retrain")
    wait_js(page, "document.querySelector('#feedback-count').dataset.count === '2'")
    assert counted(page) == "2 texts have feedback."
    button = page.locator("#feedback-retrain-button")
    status = page.locator("#feedback-retrain-status")

    # Trainings wait up to the limit: 503 overloaded, with how long to wait.
    queue = ROUTES[TRAIN]
    filler = f"filler-{keyed.redis.key_prefix}"
    room = keyed.gateway.train_queue_max - redis_client.llen(queue)
    redis_client.rpush(queue, *[filler] * max(room, 1))
    try:
        button.click()
        expect(status).to_contain_text("The server is busy and takes no training now")
        expect(status).to_contain_text("Try again in 1 min 00 s.")
        expect(button).to_be_enabled()
    finally:
        redis_client.lrem(queue, 0, filler)
    assert pipelines(jobs) == []

    # The pipeline starts, and fails: every text given feedback is a holdout text.
    button.click()
    wait_js(page, "window.__agnews.job()?.jobId != null")
    (job,) = pipelines(jobs)
    assert job.params == PipelineParams(with_feedback=True)
    with FakeWorker(keyed, "evaluate", all_left_out) as worker:
        wait_until(lambda: job.id in worker.handled)
    error = page.locator("#retrain-job .job-error")
    expect(error).to_contain_text("There is no feedback to train on")
    expect(error).to_contain_text("all 2 feedback texts are in the promotion holdout")
    expect(error).to_contain_text("Correct or confirm answers in the Classify or Review view")
    expect(page.locator("#retrain-job .step[data-stage=ingest]")).to_have_attribute(
        "data-state", "failed"
    )

    # "500+" where the list came back full; the other refusals in words.
    told = page.evaluate(
        """async () => {
          const retrain = await import("/js/retrain.js");
          const { ApiError } = await import("/js/api.js");
          const refused = (status, code, message, details) =>
            retrain.pipelineRefusal(new ApiError(status, code, message, details));
          return {
            full: retrain.feedbackCount(500, true),
            one: retrain.feedbackCount(1, false),
            forbidden: refused(403, "forbidden", "this needs the admin scope"),
            invalid: refused(422, "invalid_request", "with_feedback: extra inputs"),
            limited: refused(429, "rate_limited", "slow down", { retry_after_s: 5 }),
          };
        }"""
    )
    assert told["full"] == "500+ texts have feedback."
    assert told["one"] == "1 text has feedback."
    assert told["forbidden"].startswith("This key may not start pipelines")
    assert "with_feedback: extra inputs" in told["invalid"]
    assert told["limited"].endswith("Try again in 5 s.")


def test_a_key_without_the_admin_scope_gets_no_button(
    page: Page, keyed: Settings, jobs: JobStore
) -> None:
    give_feedback(keyed, CORRECTIONS)
    sign_in(page, READER, "rob")
    assert counted(page) == "3 texts have feedback."
    note = page.locator("#feedback-retrain-admin")
    expect(note).to_be_visible()
    expect(note).to_contain_text("Retraining needs an admin key")
    expect(page.locator("#feedback-retrain-button")).to_be_hidden()
    usable = page.evaluate(
        """[...document.querySelectorAll('#screen-retrain button')]
             .filter((b) => b.offsetParent !== null && !b.disabled)
             .map((b) => b.textContent.trim())"""
    )
    assert usable == ["Choose archive.zip…"]
    # Even forced, the click starts nothing: the view does not send what the key may not do.
    page.locator("#feedback-retrain-button").dispatch_event("click")
    page.wait_for_timeout(300)
    assert pipelines(jobs) == []
    assert page.locator("#feedback-retrain-status").inner_text() == ""


def test_the_server_refuses_a_key_without_the_admin_scope(gateway: Gateway) -> None:
    """What the hidden button would meet: the gateway's 403, whatever the page shows."""
    answer = httpx.post(
        f"{gateway.url}/v1/jobs",
        json={"type": "pipeline", "with_feedback": True},
        headers={"Authorization": f"Bearer {READER}"},
    )
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"]["code"] == "forbidden"
