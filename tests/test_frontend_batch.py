"""Batch prediction from the web app, in Debian's chromium, against a real gateway: a file of more
than CONFIG.batchAboveRows texts chosen in the Classify view is not classified in the page but
uploaded as it is to the object store and handed to a batch_predict job, which the view follows
(rows done of the total, rows/s, ETA) to its summary and a predictions.csv to download. A plain
text file goes up as a CSV with a `text` header; an upload the gateway refuses says why; a file
at the threshold is still classified in the page.

The evaluate worker's part is played in the test (testkit.FakeWorker): it runs the batch job's
own code (pipeline.batch.run_batch) through the workers' JobReporter, with a stand-in predict
fleet that holds back the second half of the chunks until the page has shown the first half's
progress."""

import csv
import io
import threading
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, FilePayload, Page, sync_playwright

from pipeline.batch import HEADER, run_batch
from shared.contracts.errors import ErrorInfo, error_info
from shared.contracts.jobs import BatchPredictParams, Job, JobType, PredictParams, new_job_id
from shared.contracts.results import BatchPredictResult, PredictResult
from shared.jobstore import JobStore
from shared.registry import ModelRegistry
from shared.settings import Settings
from shared.storage import parse_s3_url, s3_client
from testkit.gateway import FakeWorker, Gateway, serve
from testkit.job_results import LABELS, predict_result
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
from workers.reporting import JobReporter

pytestmark = [pytest.mark.browser]

STEP_MS = 20_000
ROWS = 600
CHUNK = 32
HELD_AFTER = 10  # chunks answered before the fleet holds the rest: 320 of 600 rows


@pytest.fixture
def batchy(settings: Settings) -> Settings:
    """Progress often enough to see while the fleet holds back; the default chunks."""
    return settings.replace(progress_interval_s=0.1, batch_chunk_texts=CHUNK)


@pytest.fixture
def gateway(batchy: Settings) -> Iterator[Gateway]:
    register(batchy, NEWER, timedelta(days=1))
    ModelRegistry(s3_client(batchy.storage), batchy.storage).promote(NEWER, "first")
    with serve(batchy) as running:
        yield running


def open_page(gateway: Gateway) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser: Browser = playwright.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS
        )
        context = browser.new_context(viewport=DESKTOP, base_url=gateway.url, accept_downloads=True)
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
def page(gateway: Gateway) -> Iterator[Page]:
    yield from open_page(gateway)


class HeldFleet:
    """The predict fleet as a batch job sees it, answering every text Sports: the first
    `held_after` chunks at once, the rest once `go_on` is set. `holding` is set when it first
    holds a chunk back."""

    def __init__(self, held_after: int) -> None:
        self.held_after = held_after
        self.pending: dict[str, list[str]] = {}
        self.answered = 0
        self.go_on = threading.Event()
        self.holding = threading.Event()

    def send(self, texts: list[str]) -> str:
        job_id = new_job_id()
        self.pending[job_id] = texts
        return job_id

    def answers(self, job_ids: Sequence[str]) -> dict[str, PredictResult | ErrorInfo]:
        ended: dict[str, PredictResult | ErrorInfo] = {}
        for job_id in job_ids:
            if self.answered >= self.held_after and not self.go_on.is_set():
                self.holding.set()
                break
            texts = self.pending.pop(job_id)
            ended[job_id] = predict_result(NEWER, ("Sports",) * len(texts))
            self.answered += 1
        return ended


class BatchWorker:
    """Plays the evaluate worker's batch_predict task (workers/tasks.py): the job started, its
    stage announced, pipeline.batch.run_batch against the bucket and `fleet`, the result stored;
    an exception fails the job and is kept for the test to show."""

    def __init__(self, settings: Settings, fleet: HeldFleet) -> None:
        self.settings = settings
        self.fleet = fleet
        self.errors: list[Exception] = []

    def __call__(self, store: JobStore, job_id: str) -> None:
        try:
            params = store.get(job_id).params
            assert isinstance(params, BatchPredictParams)
            reporter = JobReporter(store, job_id)
            store.start(job_id)
            reporter.stage("batch_predict", "started", dataset=params.dataset)
            s3 = s3_client(self.settings.storage)
            result = run_batch(job_id, params.dataset, self.settings, reporter, self.fleet, s3)
            reporter.stage("batch_predict", "finished", rows=result.rows, seconds=result.seconds)
            store.succeed(job_id, result)
        except Exception as exc:
            self.errors.append(exc)
            store.fail(job_id, error_info(exc))


def labelled_csv(rows: int) -> bytes:
    """`id,text,label` rows whose labels cycle through the four; texts with commas, quotes and
    a line break, as a spreadsheet writes them."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(("id", "text", "label"))
    for index in range(rows):
        text = f'Story {index}: "markets", matches and\nmissions'
        writer.writerow((index + 1, text, LABELS[index % len(LABELS)]))
    return out.getvalue().encode()


def batch_jobs(store: JobStore) -> list[Job]:
    return store.recent(JobType.batch_predict, None, 50, None)


def bucket_object(settings: Settings, url: str) -> bytes:
    bucket, key = parse_s3_url(url, settings.storage)
    body = s3_client(settings.storage).get_object(Bucket=bucket, Key=key)["Body"].read()
    return bytes(body)


def choose(page: Page, name: str, data: bytes, mime: str = "text/csv") -> None:
    page.set_input_files("#classify-file", FilePayload(name=name, mimeType=mime, buffer=data))


def progress_text(page: Page) -> str:
    text: str = page.locator("#classify-result .job-progress").inner_text()
    return text


def test_a_file_of_600_rows_runs_as_a_batch_job_and_its_predictions_csv_downloads(
    page: Page, batchy: Settings
) -> None:
    store = JobStore.from_settings(batchy)
    data = labelled_csv(ROWS)
    fleet = HeldFleet(HELD_AFTER)
    worker = BatchWorker(batchy, fleet)
    page.goto("/#/classify")
    page.locator("#classify-text").wait_for()
    assert page.locator("#classify-batch-rows").inner_text() == "500"

    with FakeWorker(batchy, "evaluate", worker):
        choose(page, "news.csv", data)
        wait_js(page, "window.__agnews.job() && window.__agnews.job().jobId !== null")
        job_id: str = page.evaluate("window.__agnews.job().jobId")

        # The file went up as it is, and only a batch job was made: no text was classified in
        # the page, none sent to /v1/predict.
        [job] = batch_jobs(store)
        assert job.id == job_id
        assert isinstance(job.params, BatchPredictParams)
        dataset = job.params.dataset
        assert dataset.startswith(f"s3://{batchy.storage.bucket}/incoming/batches/")
        assert dataset.endswith("/input.csv")
        assert bucket_object(batchy, dataset) == data
        assert store.recent(JobType.predict, None, 50, None) == []
        assert page.locator("#classify-text").input_value() == ""
        note = page.locator("#classify-file-note").inner_text()
        assert "news.csv holds 600 texts" in note
        assert "batch job" in note
        status = page.locator("#classify-status")
        assert job_id in status.inner_text()
        assert status.get_by_role("link").get_attribute("href") == f"#/jobs/{job_id}"

        # Half the rows answered and the rest held back: the view shows rows, rate and ETA.
        assert fleet.holding.wait(30), f"the batch did not get going: {worker.errors}"
        held = HELD_AFTER * CHUNK
        wait_js(
            page,
            "(document.querySelector('#classify-result .job-progress')?.textContent ?? '')"
            f".includes('{held} of {ROWS} rows')",
        )
        figures = progress_text(page)
        assert "rows/s" in figures, figures
        assert "ETA" in figures, figures
        assert "53%" in figures, figures
        bar = page.locator("#classify-result .job-progress [role=progressbar]")
        assert bar.get_attribute("aria-valuenow") == str(round(held / ROWS * 100))
        assert page.evaluate("window.__agnews.job().status") == "running"
        page.get_by_role("button", name="Cancel job").wait_for()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / "batch-progress.png", full_page=True)

        fleet.go_on.set()
        wait_js(page, "window.__agnews.job().ended && window.__agnews.job().rendered")
    assert worker.errors == []
    assert page.evaluate("window.__agnews.job().status") == "succeeded"

    # The summary: the job's own result, as the batch code computed it from the answers.
    result = store.get(job_id).result
    assert isinstance(result, BatchPredictResult)
    assert (result.rows, result.labelled, result.accuracy) == (ROWS, ROWS, 0.25)
    summary = page.locator("#classify-result .batch-output")
    tiles = {
        name: summary.locator(f"[data-metric={name}] .tile-value").inner_text()
        for name in ("rows", "model", "accuracy")
    }
    assert tiles == {"rows": "600", "model": NEWER, "accuracy": "25.0%"}
    assert "600 rows of the file that carried a label" in summary.inner_text()
    # Every row was answered Sports: each true class's 150 rows sit in the Sports column.
    matrix = summary.locator("table.confusion tbody tr")
    assert matrix.count() == len(LABELS)
    for index in range(len(LABELS)):
        cells = [text.split("\n")[0] for text in matrix.nth(index).locator("td").all_inner_texts()]
        assert cells == ["0", "150", "0", "0"], (LABELS[index], cells)
    stage = page.locator("#classify-result .step[data-stage=batch_predict]")
    assert stage.get_attribute("data-state") == "done"
    assert "600 rows" in stage.inner_text()
    assert page.get_by_role("button", name="Cancel job").count() == 0
    page.screenshot(path=SCREENSHOTS / "batch-done.png", full_page=True)

    # The download follows GET /v1/jobs/{id}/output's presigned URL to the bucket's file.
    output = bucket_object(batchy, f"{batchy.storage.predictions_prefix}{job_id}/predictions.csv")
    with page.expect_download() as started:
        summary.get_by_role("button", name="Download predictions.csv").click()
    downloaded = Path(started.value.path()).read_bytes()
    assert downloaded == output
    lines = list(csv.reader(io.StringIO(downloaded.decode())))
    assert tuple(lines[0]) == HEADER
    assert [line[0] for line in lines[1:]] == [str(row) for row in range(1, ROWS + 1)]
    assert {line[1] for line in lines[1:]} == {"Sports"}
    link = summary.locator(".download-status a")
    assert link.inner_text() == "open the file"
    assert (link.get_attribute("href") or "").startswith(batchy.storage.endpoint_url or "http")
    assert page.url.endswith("#/classify"), "the download took the page away"

    page.set_viewport_size(PHONE)
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    page.set_viewport_size(DESKTOP)
    assert overflow <= 0, f"the batch job's summary is {overflow}px wider than the phone"


def test_a_long_text_file_goes_up_as_a_csv_with_a_text_header(page: Page, batchy: Settings) -> None:
    store = JobStore.from_settings(batchy)
    lines = [f'Line {index}, with "quotes"' for index in range(501)]
    page.goto("/#/classify")
    page.locator("#classify-text").wait_for()
    choose(page, "lines.txt", ("\n".join(lines) + "\n").encode(), "text/plain")
    wait_js(page, "window.__agnews.job() && window.__agnews.job().jobId !== null")
    [job] = batch_jobs(store)
    assert isinstance(job.params, BatchPredictParams)
    assert job.params.dataset.endswith("/input.csv")
    uploaded = bucket_object(batchy, job.params.dataset).decode()
    assert list(csv.reader(io.StringIO(uploaded))) == [["text"]] + [[line] for line in lines]
    # Queued, no worker yet: the view says so.
    page.locator("#classify-result .job-progress", has_text="Queued").wait_for()


def test_an_upload_the_gateway_refuses_says_why_and_starts_no_job(
    settings: Settings,
) -> None:
    small = settings.replace(upload_max_bytes=1000)
    store = JobStore.from_settings(small)
    with serve(small) as gateway:
        for page in open_page(gateway):
            page.goto("/#/classify")
            page.locator("#classify-text").wait_for()
            choose(page, "news.csv", labelled_csv(ROWS))
            status = page.locator("#classify-status.error")
            status.wait_for()
            text = status.inner_text()
            assert "news.csv is" in text
            assert "the server takes files of at most 1000 B" in text, text
            assert page.locator("#classify-file-button").is_enabled()
    assert batch_jobs(store) == []


def test_a_file_at_the_threshold_is_still_classified_in_the_page(
    page: Page, batchy: Settings
) -> None:
    store = JobStore.from_settings(batchy)
    texts = [f"Headline {index}" for index in range(500)]
    body = "text\r\n" + "".join(f"{text}\r\n" for text in texts)
    page.goto("/#/classify")
    page.locator("#classify-text").wait_for()
    choose(page, "five-hundred.csv", body.encode())
    wait_js(page, "document.querySelector('#classify-text').value !== ''")
    assert page.locator("#classify-text").input_value() == "\n".join(texts)
    assert page.locator("#classify-count").inner_text() == "500 texts"

    def answer_sports(store: JobStore, job_id: str) -> None:
        params = store.get(job_id).params
        assert isinstance(params, PredictParams)
        store.start(job_id)
        store.succeed(job_id, predict_result(NEWER, ("Sports",) * len(params.texts)))

    with FakeWorker(batchy, "predict", answer_sports):
        page.click("#classify-submit")
        page.locator("#classify-result table.results").wait_for()
    assert page.locator("#classify-result table.results tbody tr").count() == 500
    assert "Classified 500 texts." in page.locator("#classify-status").inner_text()
    assert batch_jobs(store) == []
    assert len(store.recent(JobType.predict, None, 50, None)) == 8  # 500 texts, 64 a request
    assert page.evaluate("window.__agnews.job()") is None
