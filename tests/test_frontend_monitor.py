"""The web app's Monitor view in Debian's chromium.

On the real stack, with the tiny model serving: texts classified through the gateway show up in the
view as the predict worker counted them (label mix against the holdout, histograms, throughput,
drift against each threshold, forward passes), and a challenger the worker scores on live traffic
shows its agreement and its disagreements; an admin dismisses it, names it again from the Models
view and promotes it from the Monitor. Against a gateway with keys, a read-only key sees the
figures without the admin buttons. Screenshots land in tests/screenshots/."""

import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from pipeline.registry import publish
from shared.contracts.keys import ApiKey, key_digest
from shared.contracts.labels import LABELS
from shared.contracts.monitor import (
    CONFIDENCE_EDGES,
    DISAGREEMENT_CHARS,
    MARGIN_EDGES,
    SIGNALS,
    TOKEN_EDGES,
)
from shared.contracts.results import Prediction
from shared.monitoring import ServingTally
from shared.redis_clients import sync_client
from shared.registry import ModelRegistry
from shared.settings import Settings
from shared.storage import s3_client
from testkit.gateway import Gateway, serve
from testkit.models import copy_as_new_version, mini_dataset, tiny_model
from testkit.stack import LiveStack, live_stack, serve_model
from tests.test_frontend import (
    CHROMIUM_ARGS,
    DESKTOP,
    PHONE,
    SCREENSHOTS,
    _console,
    chromium_path,
    open_page,
    screenshot,
    wait_js,
)
from tests.test_gateway_models import NEWER, OLDER, register

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SENT = 16  # texts classified through the gateway, one request each
DISAGREE = 3  # disagreements written besides the challenger's own answers
PNG = b"\x89PNG\r\n\x1a\n"
NOTHING = "\N{EN DASH}"  # what the page shows for a figure it does not have


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    # Counts reach Redis every half second, and drift is scored from 10 texts, so that a few
    # texts fill every figure.
    with live_stack(
        tmp_path_factory.mktemp("monitor-stack"),
        queues=("predict",),
        model_poll_s=0.5,
        monitor_flush_s=0.5,
        monitor_min_texts=10,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def production(stack: LiveStack, model_dir: Path) -> str:
    return serve_model(stack, model_dir, "Stocks rally as oil prices fall")


@pytest.fixture(scope="module")
def client(stack: LiveStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=60) as http:
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


@pytest.fixture
def page(browser: Browser, stack: LiveStack) -> Iterator[Page]:
    yield from open_page(browser, stack, DESKTOP)


@pytest.fixture(scope="module")
def classified(client: httpx.Client, production: str) -> dict[str, Any]:
    """SENT texts classified through the gateway once the window has settled: the texts, their
    answers, and the window (read from the API) before and after."""
    before = settled_report(client, production)
    texts = [row.text for row in mini_dataset().test.rows[:SENT]]
    # One at a time: on two busy cores admission may take no more from one worker.
    predictions = [prediction for text in texts for prediction in classify(client, [text])]
    after = wait_for_texts(client, production, before["live"]["n"] + SENT)
    return {"texts": texts, "predictions": predictions, "before": before, "after": after}


def classify(client: httpx.Client, texts: list[str]) -> list[dict[str, Any]]:
    """The texts' answers; while admission finds the fleet busy (one worker on shared cores,
    its pace still unmeasured), asked again a little later."""
    deadline = time.monotonic() + 120
    while (answer := client.post("/v1/predict", json={"texts": texts})).status_code == 503:
        assert answer.json()["error"]["code"] == "overloaded", answer.text
        assert time.monotonic() < deadline, answer.text
        time.sleep(min(float(answer.headers.get("Retry-After", 1)), 2.0))
    if answer.status_code == 202:
        job_id = answer.json()["id"]
        deadline = time.monotonic() + 120
        while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] != "succeeded":
            assert job["status"] in ("queued", "running"), job
            assert time.monotonic() < deadline, f"job {job_id} was not answered"
            time.sleep(0.2)
        result: dict[str, Any] = job["result"]
    else:
        assert answer.status_code == 200, answer.text
        result = answer.json()
    predictions: list[dict[str, Any]] = result["predictions"]
    assert len(predictions) == len(texts)
    return predictions


def monitor(client: httpx.Client, version: str) -> dict[str, Any]:
    answer = client.get(f"/v1/models/{version}/monitor")
    assert answer.status_code == 200, answer.text
    report: dict[str, Any] = answer.json()
    return report


def settled_report(client: httpx.Client, version: str) -> dict[str, Any]:
    """The window once the texts of serving's first requests are all counted: at least the one
    answered 200 (serve_model's last), and unchanged for 3 s (the worker adds its counts every
    half second, when its watcher is not busy loading)."""
    report = monitor(client, version)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(3)
        again = monitor(client, version)
        if again["live"] == report["live"] and again["live"]["n"] >= 1:
            return again
        report = again
    raise AssertionError("the window never settled")


def wait_for_texts(client: httpx.Client, version: str, n: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while (report := monitor(client, version))["live"]["n"] < n:
        assert time.monotonic() < deadline, f"the window holds {report['live']['n']} of {n}"
        time.sleep(0.25)
    assert report["live"]["n"] == n
    return report


def challenge_of(client: httpx.Client, production: str) -> dict[str, Any]:
    report: dict[str, Any] | None = monitor(client, production)["challenge"]
    assert report is not None, "no challenger beside production"
    return report


def settled_challenge(client: httpx.Client, production: str) -> dict[str, Any]:
    """The challenger's figures once the worker has added all it scored: unchanged for 2 s."""
    report = challenge_of(client, production)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(2)
        again = challenge_of(client, production)
        if again == report:
            return again
        report = again
    raise AssertionError("the challenger's figures never settled")


def counts(page: Page, selector: str) -> list[int]:
    return [int(value) for value in page.locator(selector).evaluate_all(COUNTS)]


COUNTS = "els => els.map(el => el.getAttribute('data-count') ?? el.getAttribute('data-n'))"


def words(text: str) -> str:
    """Text with its white space as a page shows it: runs of it as one space."""
    return " ".join(text.split())


def fixed(value: float, digits: int) -> str:
    """Number.prototype.toFixed: the float's exact value rounded half up."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def share(part: int, whole: int) -> str:
    return f"{fixed(part / whole * 100, 1)}%"


def duration(seconds: float) -> str:
    """A forward pass's time as the page writes it."""
    if seconds >= 1:
        return f"{fixed(seconds, 2)} s"
    return f"{fixed(seconds * 1000, 2 if seconds < 0.01 else 1)} ms"


def assert_png(name: str) -> None:
    image = (SCREENSHOTS / f"{name}.png").read_bytes()
    assert image.startswith(PNG)
    assert len(image) > 20_000, f"{name}.png is {len(image)} bytes: is anything drawn?"


def test_the_monitor_shows_what_the_window_holds(
    page: Page, client: httpx.Client, production: str, classified: dict[str, Any]
) -> None:
    before, report = classified["before"], classified["after"]
    live, reference = report["live"], report["reference"]
    n = before["live"]["n"] + SENT
    answered = Counter(prediction["label"] for prediction in classified["predictions"])
    earlier = before["live"]["labels"]
    for label in LABELS:
        assert live["labels"].get(label, 0) == earlier.get(label, 0) + answered[label]
    assert reference is not None
    assert reference["n"] > 0

    page.goto("/#/monitor")
    wait_js(page, f"window.__agnews.monitor().texts === {n}")
    assert page.locator("[data-tab=monitor]").get_attribute("aria-current") == "page"
    assert page.input_value("#monitor-version") == production
    assert "(production)" in page.locator("#monitor-version option:checked").inner_text()
    assert production in page.locator(".monitor-version").inner_text()
    assert page.locator("#monitor-empty").count() == 0

    # The window's texts, and what was answered since the version served.
    tiles = "#monitor-body .monitor-tiles .tile[data-metric={}] .tile-value"
    assert page.inner_text(tiles.format("window-texts")) == str(n)
    assert page.inner_text(tiles.format("total-texts")) == f"{report['total_texts']:,}"
    assert report["total_texts"] >= n

    # The label mix, label by label, against the holdout's.
    for label in LABELS:
        row = f"table.mix-table tr[data-label='{label}']"
        count = live["labels"].get(label, 0)
        assert page.inner_text(f"{row} [data-field=count]") == str(count)
        assert page.inner_text(f"{row} [data-field=share]") == share(count, n)
        held = reference["labels"].get(label, 0)
        assert page.inner_text(f"{row} [data-field=holdout]") == share(held, reference["n"])
    mix = "svg.chart g.mix"
    assert page.locator(mix).count() == 4
    answered_labels = [label for label in LABELS if live["labels"].get(label)]
    for label in answered_labels:
        assert page.locator(f"{mix}[data-series='{label}'] circle").count() >= 1
    assert page.locator("svg.chart line.rule").count() == 4  # the holdout's share of each

    # Throughput: the minutes' bars hold every text of the window.
    assert sum(counts(page, "svg.chart g.throughput rect")) == n
    minutes = [minute["n"] for minute in report["timeline"]]
    assert len(minutes) == report["window_minutes"]
    peak = page.inner_text("#monitor-body .tile[data-metric=peak-minute] .tile-value")
    assert peak == f"{max(minutes)}/min"

    # The confidence histogram, live beside the holdout; then the tokens'.
    assert page.inner_text("#monitor-h-dist") == "Confidence histogram"
    assert counts(page, "svg.chart g.bars.live rect") == live["confidence"]
    assert counts(page, "svg.chart g.bars.holdout rect") == reference["confidence"]
    assert len(live["confidence"]) == len(CONFIDENCE_EDGES)
    page.select_option("#monitor-signal", "tokens")
    wait_js(page, "document.querySelector('#monitor-h-dist').textContent === 'Length histogram'")
    assert counts(page, "svg.chart g.bars.live rect") == live["tokens"]
    assert counts(page, "svg.chart g.bars.holdout rect") == reference["tokens"]
    assert page.evaluate("document.activeElement.id") == "monitor-signal"

    # Each drift score against its threshold, scored (the window holds over 10 texts).
    rows = page.locator("table.drift tbody tr")
    assert rows.evaluate_all("els => els.map(el => el.dataset.signal)") == list(SIGNALS)
    for score in report["drift"]:
        row = f"table.drift tr[data-signal={score['signal']}]"
        assert score["psi"] is not None
        assert page.inner_text(f"{row} [data-field=psi]") == f"{score['psi']:.3f}"
        assert page.inner_text(f"{row} [data-field=threshold]") == f"{score['threshold']:.3f}"
        assert page.get_attribute(row, "data-drifted") == str(score["drifted"]).lower()
        state = page.inner_text(f"{row} [data-field=state]").strip().lower()
        assert state == ("drifted" if score["drifted"] else "stable")

    # Forward passes by form and pass size.
    assert report["forward"], "the worker counted no forward pass"
    assert page.locator("table.forward tbody tr").count() == len(report["forward"])
    for figures in report["forward"]:
        row = (
            f"table.forward tr[data-form='{figures['form']}']"
            f"[data-size='{figures['texts_per_pass']}']"
        )
        assert page.inner_text(f"{row} [data-field=passes]") == f"{figures['passes']:,}"
        assert page.inner_text(f"{row} [data-field=texts]") == f"{figures['texts']:,}"
        assert page.inner_text(f"{row} [data-field=p50]").endswith(("ms", " s"))
    assert sum(figures["texts"] for figures in report["forward"]) == report["total_texts"]

    no_challenger = page.inner_text("#monitor-no-challenger")
    assert "No challenger is named" in no_challenger
    assert "Models" in no_challenger
    page.select_option("#monitor-signal", "confidence")
    screenshot(page, "monitor")
    assert_png("monitor")

    # It refreshes by itself while shown, and fits a phone.
    refreshes = page.evaluate("window.__agnews.monitor().refreshes")
    wait_js(page, f"window.__agnews.monitor().refreshes > {refreshes}", timeout=25_000)
    page.set_viewport_size(PHONE)
    page.click("#monitor-refresh")
    wait_js(page, f"window.__agnews.monitor().refreshes > {refreshes + 1}")
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the monitor is {overflow}px wider than the phone"
    screenshot(page, "phone-monitor")


def disagreeing(prediction: Prediction) -> Prediction:
    """Another label than production's, held at 0.7."""
    other = LABELS[(prediction.label_id + 1) % len(LABELS)]
    scores = {label: 0.7 if label == other else 0.1 for label in LABELS}
    return Prediction(label=other, label_id=LABELS.index(other), scores=scores, truncated=False)


def test_the_challenger_is_compared_dismissed_named_and_promoted(
    page: Page,
    client: httpx.Client,
    stack: LiveStack,
    production: str,
    model_dir: Path,
    classified: dict[str, Any],
    tmp_path: Path,
) -> None:
    registry = ModelRegistry.from_settings(stack.settings.storage)
    copy_as_new_version(model_dir, tmp_path / "copy")
    challenger = publish(registry, tmp_path / "copy").version
    named = client.post(
        f"/v1/models/{challenger}/challenge", json={"share": 1.0, "reason": "monitor test"}
    )
    assert named.status_code == 200, named.text

    # Live traffic: the worker loads the challenger within a poll or two, then scores every text
    # production answers (its share is all of them), after production's answer is sent.
    texts = classified["texts"]
    sent = 0
    deadline = time.monotonic() + 180
    while challenge_of(client, production)["scored"] == 0:
        assert time.monotonic() < deadline, "the challenger scored nothing"
        classify(client, [texts[sent % SENT]])
        sent += 1
    live = settled_challenge(client, production)
    assert live["challenger"] == challenger
    assert 0 < live["scored"] + live["failed"] <= sent
    assert live["mean_seconds"] > 0

    # The same weights seldom disagree, so three disagreements besides, counted as a predict
    # worker counts them: the challenger labelled three texts otherwise, at 0.7.
    ours = [Prediction.model_validate(p) for p in classified["predictions"][:DISAGREE]]
    theirs = [disagreeing(p) for p in ours]
    tally = ServingTally(stack.settings.monitor, stack.settings.redis.key_prefix)
    written = texts[:DISAGREE]
    lengths = [len(text.split()) for text in written]
    tally.add_challenge(challenger, production, written, (ours, theirs), lengths, 0.05)
    redis = sync_client(stack.settings.redis)
    try:
        tally.flush(redis)
    finally:
        redis.close()
    report = challenge_of(client, production)
    assert report["scored"] == live["scored"] + DISAGREE
    assert report["agreed"] == live["agreed"]

    page.goto("/#/monitor")
    panel = page.locator(f"section.challenger[data-version='{challenger}']")
    panel.wait_for()
    wait_js(page, f"window.__agnews.monitor().challenger === '{challenger}'")
    tile = "section.challenger .tile[data-metric={}] .tile-value"
    scored, agreed = report["scored"], report["agreed"]
    wait_js(
        page,
        f"document.querySelector(\"{tile.format('scored')}\")?.textContent === '{scored}'",
    )
    # The API rounds the agreement to 4 places; the page shows that figure to 1 place.
    assert report["agreement"] == round(agreed / scored, 4)
    assert page.inner_text(tile.format("agreement")) == f"{fixed(report['agreement'] * 100, 1)}%"
    assert f"{agreed} of {scored} labelled alike" in panel.inner_text()
    assert page.inner_text(tile.format("challenger-mean")) == duration(report["mean_seconds"])
    assert page.inner_text(tile.format("failed")) == str(report["failed"])
    assert "100%" in panel.inner_text()  # its share
    assert "monitor test" in panel.inner_text()
    option = page.locator(f"#monitor-version option[value='{challenger}']")
    assert option.inner_text() == f"{challenger} (challenger)"

    # Agreement by production's label.
    assert [row["label"] for row in report["by_label"]] == list(LABELS)
    for figures in report["by_label"]:
        row = f"table.agreement tr[data-label='{figures['label']}']"
        assert page.inner_text(f"{row} [data-field=scored]") == str(figures["scored"])
        assert page.inner_text(f"{row} [data-field=agreed]") == str(figures["agreed"])
        rate = page.inner_text(f"{row} [data-field=rate]").strip()
        assert rate == (
            share(figures["agreed"], figures["scored"]) if figures["scored"] else NOTHING
        )

    # Each disagreement, the surest first: the text, and both labels with their confidence.
    rows = page.locator("table.disagreements tbody tr")
    assert rows.count() == len(report["disagreements"])
    shown = [
        (
            words(rows.nth(i).locator("td.text-cell").inner_text()),
            rows.nth(i).locator("[data-field=production] .chip").inner_text(),
            rows.nth(i).locator("[data-field=challenger] .chip").inner_text(),
            rows.nth(i).locator("[data-field=challenger] .muted").inner_text(),
        )
        for i in range(rows.count())
    ]
    assert shown == [
        (
            words(d["text"]),
            d["production_label"],
            d["challenger_label"],
            f"{fixed(d['challenger_confidence'] * 100, 0)}%",
        )
        for d in report["disagreements"]
    ]
    for text, answer, other in zip(written, ours, theirs, strict=True):
        assert (words(text[:DISAGREEMENT_CHARS]), answer.label, other.label, "70%") in shown
    screenshot(page, "monitor-challenger")
    assert_png("monitor-challenger")

    # Dismissed from here, after a confirmation.
    page.click("#challenger-dismiss")
    dialog = page.locator("#challenger-dialog")
    assert dialog.is_visible()
    assert page.inner_text("#challenger-title") == "Dismiss the challenger"
    assert page.locator("#challenger-reason-field").is_hidden()
    page.click("#challenger-confirm")
    page.locator("#monitor-no-challenger").wait_for()
    assert client.get("/v1/models/challenger").status_code == 404
    assert challenger in page.inner_text("#monitor-status")

    # Named again from the Models view, on half the traffic.
    page.goto("/#/models")
    page.get_by_role("button", name=f"Name {challenger} challenger").click()
    assert page.locator("#challenge-dialog").is_visible()
    page.fill("#challenge-share", "50")
    page.fill("#challenge-reason", "named again in the browser")
    page.click("#challenge-confirm")
    wait_js(page, f"document.querySelector('#models-status').textContent.includes('{challenger}')")
    pointer = client.get("/v1/models/challenger").json()
    assert pointer["version"] == challenger
    assert pointer["share"] == 0.5
    assert pointer["reason"] == "named again in the browser"
    row = page.locator(f"table.models tr[data-version='{challenger}']")
    wait_js(
        page,
        f"document.querySelector(\"tr[data-version='{challenger}']\").textContent"
        ".includes('challenger')",
    )
    assert row.get_by_role("button", name=f"Name {challenger} challenger").count() == 0

    # Promoted from the Monitor: it serves, and is no longer the challenger.
    page.goto("/#/monitor")
    page.locator(f"section.challenger[data-version='{challenger}']").wait_for()
    assert "50%" in page.inner_text("section.challenger")
    page.click("#challenger-promote")
    assert page.inner_text("#challenger-title") == "Promote the challenger"
    page.fill("#challenger-reason", "it agrees and is as fast")
    page.click("#challenger-confirm")
    wait_js(page, f"document.querySelector('#serving').textContent.includes('{challenger}')")
    served = client.get("/v1/models/production").json()
    assert served["version"] == challenger
    assert served["reason"] == "it agrees and is as fast"
    assert served["previous"] == production
    assert client.get("/v1/models/challenger").status_code == 404
    wait_js(page, f"window.__agnews.monitor().version === '{challenger}'")
    page.locator("#monitor-no-challenger").wait_for()


# A gateway with keys, without a model: what a read-only key sees.

VIEWER_KEY = "browser-viewer-key"
VIEWER = ApiKey(name="viewer", sha256=key_digest(VIEWER_KEY), scopes=("predict", "read"))


@pytest.fixture
def keyed_gateway(settings: Settings) -> Iterator[Gateway]:
    keyed = settings.replace(api_keys=[VIEWER])
    register(keyed, OLDER, timedelta(days=2))
    register(keyed, NEWER, timedelta(days=1))
    registry = ModelRegistry(s3_client(keyed.storage), keyed.storage)
    registry.promote(NEWER, "first")
    registry.name_challenger(OLDER, 0.1, "a look")
    with serve(keyed) as running:
        yield running


@pytest.fixture
def viewer_page(browser: Browser, keyed_gateway: Gateway) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP, base_url=keyed_gateway.url)
    page = context.new_page()
    crashes: list[str] = []
    page.on("pageerror", lambda error: crashes.append(str(error)))
    page.on("console", lambda message: _console(message, crashes))
    yield page
    context.close()
    assert crashes == [], f"the page threw: {crashes}"


def test_a_read_only_key_sees_an_empty_window_and_no_admin_buttons(viewer_page: Page) -> None:
    page = viewer_page
    page.goto("/#/monitor")
    page.locator("#signin-dialog").wait_for(state="visible")
    page.fill("#signin-key", VIEWER_KEY)
    page.click("#signin-submit")
    wait_js(page, "document.querySelector('#account-name').textContent === 'Signed in as viewer'")
    wait_js(page, f"window.__agnews.monitor().version === '{NEWER}'")

    assert "No traffic in the window yet" in page.inner_text("#monitor-empty")
    assert page.inner_text("#monitor-body .tile[data-metric=window-texts] .tile-value") == "0"
    assert "No texts answered in the window" in page.inner_text("#monitor-body")
    assert "kept no holdout profile" in page.inner_text("#monitor-body")
    for signal in SIGNALS:
        row = f"table.drift tr[data-signal={signal}]"
        assert page.inner_text(f"{row} [data-field=psi]") == NOTHING
        assert page.inner_text(f"{row} [data-field=state]") == "too few texts"
    assert "No forward passes counted yet" in page.inner_text("#monitor-body")

    panel = page.locator(f"section.challenger[data-version='{OLDER}']")
    panel.wait_for()
    assert "No sampled texts scored yet" in panel.inner_text()
    assert "No disagreements yet" in panel.inner_text()
    assert "needs an admin key" in page.inner_text("#challenger-admin-note")
    assert page.locator("#challenger-promote, #challenger-dismiss").count() == 0
    screenshot(page, "monitor-read-only")
    assert_png("monitor-read-only")

    page.goto("/#/models")
    page.locator(f"table.models tr[data-version='{OLDER}']").wait_for()
    assert "challenger" in page.inner_text(f"table.models tr[data-version='{OLDER}']").lower()
    assert page.get_by_role("button", name=f"Name {NEWER} challenger").count() == 0
    # Promoting is an admin's: the API would refuse it with 403, so the page offers no button.
    assert page.get_by_role("button", name=f"Details of {OLDER}").count() == 1
    assert page.get_by_role("button", name=f"Promote {OLDER}").count() == 0


def test_the_pages_histogram_buckets_are_the_servers(viewer_page: Page) -> None:
    viewer_page.goto("/js/config.js")
    edges = viewer_page.evaluate("async () => (await import('/js/config.js')).MONITOR_EDGES")
    assert edges == {
        "confidence": list(CONFIDENCE_EDGES),
        "margin": list(MARGIN_EDGES),
        "tokens": list(TOKEN_EDGES),
    }
