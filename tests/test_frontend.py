"""The browser app against the real local stack, in Debian's chromium.

Every screen is driven as a user would: archives go through the page's own upload to the S3
store, the S3-event listener starts their pipeline jobs, and the page follows their events.
Screenshots of each screen land in tests/screenshots/.
"""

import csv
import io
import os
import shutil
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    FilePayload,
    Page,
    Playwright,
    Route,
    ViewportSize,
    sync_playwright,
)

from shared.storage import s3_client
from testkit.archives import MINI_ARCHIVE, ROOT
from testkit.stack import LiveStack, live_stack
from tests.sse import read_events

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
TERMINAL = ("succeeded", "failed", "cancelled")
SCREENSHOTS = ROOT / "tests" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = ViewportSize(width=1280, height=900)
PHONE = ViewportSize(width=390, height=844)
JOB_TIMEOUT_MS = 600_000


def chromium_path() -> str:
    found = os.environ.get("AGNEWS_CHROMIUM") or shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not installed (scripts/bootstrap.sh test installs it)")
    return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    workdir = tmp_path_factory.mktemp("frontend-stack")
    with live_stack(
        workdir, training_profile="quick", pipeline_max_steps=6, progress_interval_s=0.2
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(stack: LiveStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
    yield launched
    launched.close()


def open_page(browser: Browser, stack: LiveStack, viewport: ViewportSize) -> Iterator[Page]:
    context = browser.new_context(viewport=viewport, base_url=stack.url, accept_downloads=True)
    page = context.new_page()
    crashes: list[str] = []
    page.on("pageerror", lambda error: crashes.append(str(error)))
    page.on("console", lambda message: _console(message, crashes))
    yield page
    context.close()
    assert crashes == [], f"the page threw: {crashes}"


def _console(message: ConsoleMessage, crashes: list[str]) -> None:
    # A failed resource load is logged as an error too (404 while no model serves): not a crash.
    if message.type == "error" and "Failed to load resource" not in message.text:
        crashes.append(message.text)


@pytest.fixture
def page(browser: Browser, stack: LiveStack) -> Iterator[Page]:
    yield from open_page(browser, stack, DESKTOP)


@pytest.fixture
def phone(browser: Browser, stack: LiveStack) -> Iterator[Page]:
    yield from open_page(browser, stack, PHONE)


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


def wait_js(page: Page, expression: str, timeout: float = 30_000) -> None:
    """Waits until a JavaScript expression is true. Polled from here: the page's Content
    Security Policy (no eval) rules out Page.wait_for_function's string predicates."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout:g} ms: {expression}")
        page.wait_for_timeout(50)


def job_snapshot(page: Page) -> dict[str, Any]:
    snapshot: dict[str, Any] | None = page.evaluate("window.__agnews.job()")
    assert snapshot is not None, "no job is shown"
    return snapshot


def wait_for_job_end(page: Page) -> dict[str, Any]:
    wait_js(page, "window.__agnews.job() && window.__agnews.job().ended", timeout=JOB_TIMEOUT_MS)
    wait_js(page, "window.__agnews.job().connection === 'ended' && window.__agnews.job().rendered")
    return job_snapshot(page)


def server_event_ids(client: httpx.Client, job_id: str) -> list[str]:
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=60) as response:
        assert response.status_code == 200
        return [event.id for event in read_events(response)]


def wait_for_end(client: httpx.Client, job_id: str, timeout_s: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} did not end in {timeout_s}s")


def pipeline_for(client: httpx.Client, key: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = client.get("/v1/jobs", params={"type": "pipeline", "limit": 100}).json()["jobs"]
        for job in jobs:
            if (job["params"].get("source") or {}).get("key") == key:
                found: dict[str, Any] = job
                return found
        time.sleep(0.3)
    raise TimeoutError(f"no pipeline job for {key} after {timeout_s}s")


@pytest.fixture(scope="module")
def production(stack: LiveStack, client: httpx.Client) -> str:
    """The production version; an archive dropped into the bucket makes one if none serves."""
    answer = client.get("/v1/models/production")
    if answer.status_code == 200:
        version: str = answer.json()["version"]
        return version
    key = f"{stack.settings.storage.incoming_prefix}seed/archive.zip"
    s3_client(stack.settings.storage).upload_file(
        str(MINI_ARCHIVE), stack.settings.storage.bucket, key
    )
    job = wait_for_end(client, pipeline_for(client, key)["id"])
    assert job["status"] == "succeeded", job["error"]
    version = client.get("/v1/models/production").json()["version"]
    return version


def broken_archive(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("train.csv", '"7","Title","Body"\n' * 50)
        archive.writestr("test.csv", '"1","Title","Body"\n')
    return path


# The tests run in this order; the first makes the model the others classify with.


def test_before_any_model_the_page_says_to_train_one(page: Page, client: httpx.Client) -> None:
    if client.get("/v1/models/production").status_code == 200:
        pytest.skip("a model already serves: this test runs first on a fresh stack")
    page.goto("/#/classify")
    notice = page.locator("#classify-nomodel")
    notice.wait_for()
    assert "No model is serving yet" in notice.inner_text()
    page.fill("#classify-text", "Stocks rally as oil prices fall")
    page.click("#classify-submit")
    wait_js(
        page,
        "document.querySelector('#classify-status').textContent.includes('No model is serving')",
    )
    assert page.locator("#classify-result").inner_text() == ""
    assert "No model in production" in page.inner_text("#serving")
    screenshot(page, "classify-no-model")


def test_an_upload_trains_a_model_and_the_page_streams_every_stage(
    page: Page, client: httpx.Client
) -> None:
    page.goto("/#/retrain")
    screenshot(page, "retrain-empty")
    # Every value the training progress bar shows, as the page renders it.
    page.evaluate(
        """() => {
          window.__trainProgress = [];
          new MutationObserver(() => {
            const bar = document.querySelector('#retrain-job [role=progressbar][data-stage=train]');
            const value = bar && bar.getAttribute('aria-valuenow');
            if (value !== null && window.__trainProgress.at(-1) !== Number(value)) {
              window.__trainProgress.push(Number(value));
            }
          }).observe(document.body, {subtree: true, childList: true, attributes: true});
        }"""
    )
    page.set_input_files("#upload-file", MINI_ARCHIVE)

    wait_js(page, "document.querySelector('#upload-bar').getAttribute('aria-valuenow') === '100'")
    wait_js(page, "window.__agnews.job() !== null", timeout=60_000)
    wait_js(page, "window.__agnews.job().lossPoints >= 2", timeout=JOB_TIMEOUT_MS)
    screenshot(page, "retrain-training")

    snapshot = wait_for_job_end(page)
    assert snapshot["status"] == "succeeded"
    assert snapshot["stages"] == dict.fromkeys(("ingest", "train", "evaluate", "promote"), "done")
    for stage in ("ingest", "train", "evaluate", "promote"):
        step = page.locator(f"#retrain-job .step[data-stage={stage}]")
        assert step.get_attribute("data-state") == "done"
        assert "✓" in step.inner_text()

    progress: list[int] = page.evaluate("window.__trainProgress")
    assert len(progress) >= 2, progress
    assert progress == sorted(progress)
    assert 0 < progress[-1] <= 100

    line = page.locator("#retrain-job path.loss-line")
    points = int(line.get_attribute("data-points") or 0)
    assert points >= 2
    assert points == snapshot["lossPoints"]
    path = line.get_attribute("d") or ""
    assert path.count("L") == points - 1

    report = page.locator("#retrain-job .report")
    assert "Accepted" in report.inner_text()
    assert report.locator("thead th").all_inner_texts() == ["Class", "train.csv", "test.csv"]
    assert report.locator("tbody tr").count() == 5  # a row per class and the total
    assert report.locator("tbody tr.total").inner_text().split() == ["Total", "400", "80"]
    assert "No errors or warnings." in report.inner_text()

    accuracy = page.locator("#retrain-job .tile[data-metric=accuracy] .tile-value").inner_text()
    assert accuracy.endswith("%")
    assert page.locator("#retrain-job table.per-class tbody tr").count() == 4
    assert page.locator("#retrain-job table.confusion tbody td").count() == 16
    members = page.locator("#retrain-job p.members").inner_text()
    assert "transformer alone" in members
    assert "TF-IDF linear alone" in members
    promotion = page.locator("#retrain-job .promotion").inner_text()
    assert "Promoted" in promotion

    version = client.get("/v1/models/production").json()["version"]
    assert version in promotion
    wait_js(page, f"document.querySelector('#serving').textContent.includes('{version}')")

    # The page holds every event of the job, once, in the server's order.
    assert snapshot["eventIds"] == server_event_ids(client, snapshot["jobId"])
    screenshot(page, "retrain-finished")


def test_one_text_gets_a_label_and_a_bar_per_class(page: Page, production: str) -> None:
    page.goto("/#/classify")
    page.fill("#classify-text", "Federer wins the Wimbledon final in straight sets")
    page.click("#classify-submit")
    result = page.locator(".result-one")
    result.wait_for(timeout=60_000)

    label = result.locator(".result-label").inner_text()
    assert label in LABELS
    assert result.locator(".bars li").count() == 4
    shares = [float(text.rstrip("%")) for text in result.locator(".bar-value").all_inner_texts()]
    assert abs(sum(shares) - 100) < 0.5
    assert production in result.inner_text()
    assert "undefined" not in result.inner_text()
    served = result.locator(".served-as code").inner_text()
    assert served in {"torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8"}
    screenshot(page, "classify-one")


def test_many_texts_fill_a_table_and_download_as_csv(page: Page, production: str) -> None:
    texts = [
        "Stocks rally as oil prices fall",
        "Federer wins the final in straight sets",
        "NASA launches a new rover to Mars",
    ]
    page.goto("/#/classify")
    page.fill("#classify-text", "\n".join(texts))
    page.click("#classify-submit")
    page.locator(".result-many").wait_for(timeout=60_000)
    rows = page.locator(".result-many table.results tbody tr")
    assert rows.count() == 3
    for index, text in enumerate(texts):
        assert text in rows.nth(index).inner_text()
        assert rows.nth(index).locator(".chip").inner_text() in LABELS

    with page.expect_download() as download:
        page.click("#classify-download")
    saved = Path(download.value.path()).read_text(encoding="utf-8")
    table = list(csv.DictReader(io.StringIO(saved)))
    assert [row["text"] for row in table] == texts
    for row in table:
        assert row["label"] in LABELS
        assert abs(sum(float(row[label]) for label in LABELS) - 1) < 1e-3
        assert row["model_version"] == production
    screenshot(page, "classify-many")


def test_a_csv_file_gives_its_texts(page: Page, production: str) -> None:
    content = (
        "Class Index,Title,Description\n"
        '3,Oil prices fall,"Crude dropped 3% on Monday, its lowest in a year."\n'
        "2,Federer wins,The Swiss beat his rival in three sets.\n"
    )
    page.goto("/#/classify")
    page.set_input_files(
        "#classify-file",
        files=[FilePayload(name="news.csv", mimeType="text/csv", buffer=content.encode())],
    )
    wait_js(page, "document.querySelector('#classify-text').value.includes('Oil')")
    assert page.input_value("#classify-text").splitlines() == [
        "Oil prices fall. Crude dropped 3% on Monday, its lowest in a year.",
        "Federer wins. The Swiss beat his rival in three sets.",
    ]
    assert "title" in page.inner_text("#classify-file-note")
    page.click("#classify-submit")
    page.locator(".result-many table.results tbody tr").nth(1).wait_for(timeout=60_000)


def test_the_csv_reader_takes_quotes_newlines_and_a_bom(page: Page) -> None:
    page.goto("/")
    inputs = [
        '\ufeffa,b\r\n"x, ""y""","line\nbreak"\n\n',
        'text,label\n"Hello, world",1\n  \nSecond,2\n',
        '3,"Oil falls!","Crude drops."\n4,NASA,"Rover lands"\n',
    ]
    parsed = page.evaluate(
        """async ([raw, withHeader, headerless]) => {
          const csv = await import('/js/csv.js');
          return [csv.parseCsv(raw), csv.textsFromCsv(withHeader), csv.textsFromCsv(headerless),
                  csv.toCsv([['a "q"', 'b,c', 'd\\ne']])];
        }""",
        inputs,
    )
    assert parsed == [
        [["a", "b"], ['x, "y"', "line\nbreak"]],
        {"texts": ["Hello, world", "Second"], "source": 'column "text"'},
        {"texts": ["Oil falls!", "NASA"], "source": "column 2"},
        '"a ""q""","b,c","d\ne"\r\n',
    ]


def test_the_page_recovers_every_event_after_its_stream_is_cut(
    page: Page, stack: LiveStack, client: httpx.Client
) -> None:
    key = f"{stack.settings.storage.incoming_prefix}reconnect/archive.zip"
    s3_client(stack.settings.storage).upload_file(
        str(MINI_ARCHIVE), stack.settings.storage.bucket, key
    )
    job_id = pipeline_for(client, key)["id"]
    page.goto(f"/#/jobs/{job_id}")
    wait_js(
        page,
        "window.__agnews.job() && window.__agnews.job().connection === 'live' "
        "&& window.__agnews.job().eventIds.length >= 3",
        timeout=120_000,
    )

    # Cut the stream and keep it cut while the job moves on, so the page misses events. What
    # the page holds is read once the stream is closed: events still arrive until then.
    page.route("**/v1/jobs/*/events*", lambda route: route.abort())
    assert page.evaluate("window.__agnews.dropStream()") is True
    before = job_snapshot(page)
    assert not before["ended"], "the job ended before the stream could be cut"
    seen = client.get(f"/v1/jobs/{job_id}").json()["progress"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["progress"] != seen or job["status"] in TERMINAL:
            break
        time.sleep(0.2)
    assert len(job_snapshot(page)["eventIds"]) == len(before["eventIds"])

    # Let it back in, but with the resume point stripped: the server replays everything from the
    # first event, and the page must keep each event once.
    def replay_from_start(route: Route) -> None:
        route.continue_(url=route.request.url.split("?")[0])

    page.unroute("**/v1/jobs/*/events*")
    page.route("**/v1/jobs/*/events*", replay_from_start)
    snapshot = wait_for_job_end(page)

    replay = server_event_ids(client, job_id)
    assert snapshot["eventIds"] == replay
    assert len(set(snapshot["eventIds"])) == len(snapshot["eventIds"])
    assert snapshot["connections"] >= 2
    assert snapshot["duplicatesSkipped"] >= len(before["eventIds"])
    assert snapshot["eventTypes"][-1] in ("result", "error")
    shown = page.locator("#jobs-job .activity [data-events]").get_attribute("data-events")
    assert shown == str(len(replay))
    screenshot(page, "jobs-replayed")


def test_a_broken_archive_shows_the_validation_error(
    page: Page, client: httpx.Client, tmp_path: Path
) -> None:
    production_before = client.get("/v1/models/production").json()
    page.goto("/#/retrain")
    page.set_input_files("#upload-file", broken_archive(tmp_path / "archive.zip"))
    snapshot = wait_for_job_end(page)

    assert snapshot["status"] == "failed"
    assert snapshot["stages"]["ingest"] == "failed"
    assert snapshot["stages"]["train"] == "pending"
    error = page.locator("#retrain-job .job-error .callout")
    assert "The dataset was rejected" in error.inner_text()
    message = client.get(f"/v1/jobs/{snapshot['jobId']}").json()["error"]["message"]
    assert "train.csv line 1" in message
    assert error.locator(".error-message").inner_text() == message
    assert client.get("/v1/models/production").json() == production_before
    screenshot(page, "retrain-invalid")


def test_files_that_are_not_archives_are_refused_before_upload(
    page: Page, client: httpx.Client
) -> None:
    jobs_before = client.get("/v1/jobs", params={"type": "pipeline"}).json()["jobs"]
    page.goto("/#/retrain")
    page.set_input_files(
        "#upload-file", files=[FilePayload(name="notes.txt", mimeType="text/plain", buffer=b"hi")]
    )
    status = page.locator("#upload-status")
    assert "notes.txt is not a .zip archive" in status.inner_text()
    page.set_input_files(
        "#upload-file",
        files=[FilePayload(name="archive.zip", mimeType="application/zip", buffer=b"not a zip")],
    )
    wait_js(
        page, "document.querySelector('#upload-status').textContent.includes('not a zip archive')"
    )
    assert page.locator("#upload-progress").is_hidden()
    assert client.get("/v1/jobs", params={"type": "pipeline"}).json()["jobs"] == jobs_before


def test_jobs_list_opens_a_job(page: Page, production: str) -> None:
    page.goto("/#/jobs")
    rows = page.locator("table.jobs tbody tr")
    rows.first.wait_for()
    assert "pipeline" in page.locator("table.jobs").inner_text()
    screenshot(page, "jobs")
    page.select_option("#jobs-status", "failed")
    wait_js(
        page,
        "[...document.querySelectorAll('table.jobs tbody tr')]"
        ".every(row => row.textContent.includes('failed'))",
    )
    page.select_option("#jobs-status", "succeeded")
    page.select_option("#jobs-type", "pipeline")
    # Until the list is fetched again it still shows the failed jobs, pipelines among them.
    wait_js(
        page,
        "[...document.querySelectorAll('table.jobs tbody tr')].length > 0 && "
        "[...document.querySelectorAll('table.jobs tbody tr')].every(row => "
        "row.textContent.includes('pipeline') && row.textContent.includes('succeeded'))",
    )
    page.locator("table.jobs tbody tr a", has_text="Open").first.click()
    snapshot = wait_for_job_end(page)
    assert snapshot["status"] == "succeeded"
    assert page.locator("#jobs-job path.loss-line").count() == 1
    page.click("text=← All jobs")
    page.locator("table.jobs").wait_for()


def test_models_screen_promotes_and_rolls_back(page: Page, client: httpx.Client) -> None:
    models = client.get("/v1/models").json()["models"]
    assert len(models) >= 2, "the earlier tests register two versions"
    serving = client.get("/v1/models/production").json()["version"]
    other = next(model["version"] for model in models if model["version"] != serving)

    page.goto("/#/models")
    row = page.locator(f"table.models tr[data-version='{other}']")
    row.wait_for()
    assert page.locator("table.models tbody tr").count() == len(models)
    assert "production" in page.locator(f"tr[data-version='{serving}']").inner_text().lower()
    screenshot(page, "models")

    row.get_by_role("button", name=f"Promote {other}").click()
    dialog = page.locator("#promote-dialog")
    assert dialog.is_visible()
    page.fill("#promote-reason", "chosen in the browser test")
    page.click("#promote-confirm")
    wait_js(page, f"document.querySelector('#models-status').textContent.includes('{other}')")
    pointer = client.get("/v1/models/production").json()
    assert pointer["version"] == other
    assert pointer["reason"] == "chosen in the browser test"
    assert pointer["previous"] == serving
    wait_js(page, f"document.querySelector('#serving').textContent.includes('{other}')")

    page.click("#rollback")
    page.click("#promote-confirm")
    wait_js(page, f"document.querySelector('#models-status').textContent.includes('{serving}')")
    assert client.get("/v1/models/production").json()["version"] == serving

    # Any version's record: its training curves and its model card, read from S3, not Redis.
    page.get_by_role("button", name=f"Details of {other}").click()
    card = page.locator(f"#models-detail article[data-version='{other}']")
    card.wait_for()
    assert card.locator("svg.chart path.loss-line").count() == 1
    text = card.inner_text()
    assert "Intended use and limits" in text
    assert "Confusion matrix" in text
    assert card.locator("table").count() >= 2
    screenshot(page, "model-card")


def test_a_running_job_can_be_cancelled_from_its_view(
    page: Page, stack: LiveStack, client: httpx.Client
) -> None:
    key = f"{stack.settings.storage.incoming_prefix}cancel/archive.zip"
    s3_client(stack.settings.storage).upload_file(
        str(MINI_ARCHIVE), stack.settings.storage.bucket, key
    )
    job_id = pipeline_for(client, key)["id"]
    page.goto(f"/#/jobs/{job_id}")
    page.get_by_role("button", name="Cancel job").click()
    snapshot = wait_for_job_end(page)
    assert snapshot["status"] == "cancelled"
    assert snapshot["eventTypes"][-1] == "error"
    assert "The job was cancelled" in page.locator("#jobs-job .job-error").inner_text()
    assert page.get_by_role("button", name="Cancel job").count() == 0
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"


def test_a_server_that_cannot_be_reached_is_said_so(page: Page, production: str) -> None:
    page.goto("/#/classify")
    page.route("**/v1/**", lambda route: route.abort("connectionrefused"))
    page.route("**/healthz", lambda route: route.abort("connectionrefused"))
    page.fill("#classify-text", "Stocks rally as oil prices fall")
    page.click("#classify-submit")
    banner = page.locator("#offline")
    banner.wait_for()
    assert "The server is unreachable" in banner.inner_text()
    status = page.locator("#classify-status").inner_text()
    assert "Cannot reach the server" in status
    assert "undefined" not in status
    screenshot(page, "offline")

    page.unroute("**/v1/**")
    page.unroute("**/healthz")
    page.get_by_role("button", name="Retry now").click()
    banner.wait_for(state="hidden")


def test_the_keyboard_reaches_every_screen(page: Page, production: str) -> None:
    page.goto("/#/classify")
    for name in ("Retrain", "Jobs", "Models", "Classify"):
        link = page.get_by_role("link", name=name, exact=True)
        link.focus()
        page.keyboard.press("Enter")
        wait_js(
            page,
            f"document.querySelector('[data-tab][aria-current=page]').textContent === '{name}'",
        )
    page.focus("#classify-text")
    page.keyboard.type("Stocks rally as oil prices fall")
    page.keyboard.press("Control+Enter")
    page.locator(".result-one").wait_for(timeout=60_000)
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.id")
    assert focused == "classify-submit"


def test_every_screen_fits_a_phone(phone: Page, production: str) -> None:
    for screen in ("classify", "retrain", "jobs", "models"):
        phone.goto(f"/#/{screen}")
        phone.wait_for_load_state("networkidle")
        if screen == "classify":
            phone.fill("#classify-text", "Stocks rally as oil prices fall")
            phone.click("#classify-submit")
            phone.locator(".result-one").wait_for(timeout=60_000)
        if screen == "jobs":
            phone.locator("table.jobs").wait_for()
        overflow = phone.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{screen} is {overflow}px wider than the phone"
        screenshot(phone, f"phone-{screen}")
    jobs = phone.evaluate("fetch('/v1/jobs?type=pipeline&status=succeeded').then(r => r.json())")
    phone.goto(f"/#/jobs/{jobs['jobs'][0]['id']}")
    wait_for_job_end(phone)
    overflow = phone.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the job view is {overflow}px wider than the phone"
    screenshot(phone, "phone-job")
