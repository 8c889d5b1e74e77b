import asyncio
import threading
from collections.abc import Iterator

import httpx
import pytest

from gateway.hub import EventHub, HubTuning, Subscription
from shared.contracts.errors import ErrorInfo
from shared.contracts.jobs import Event, Job, JobType, new_job_id
from shared.jobstore import AsyncJobStore, JobStore
from shared.settings import Settings
from testkit.gateway import (
    Frame,
    Gateway,
    events_only,
    read_frames,
    serve,
    sse_clients,
    wait_until,
)
from testkit.job_results import predict_result, train_result


@pytest.fixture
def settings_fast(settings: Settings) -> Settings:
    # Every client here is one address, and one test follows 40 streams at once.
    return settings.replace(sse_heartbeat_s=0.05, max_streams_per_key=100)


@pytest.fixture
def gateway(settings_fast: Settings) -> Iterator[Gateway]:
    with serve(settings_fast) as running:
        yield running


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        yield http


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore.from_settings(settings)


def new_job(store: JobStore) -> str:
    return store.create(
        Job(id=new_job_id(), type=JobType.train, params={"dataset": "s3://b/a.zip"})
    ).id


def run_job(store: JobStore, job_id: str, steps: int = 3) -> None:
    store.start(job_id)
    for step in range(steps):
        store.progress(job_id, {"stage": "train", "step": step + 1, "total": steps})
    store.succeed(job_id, train_result())


def finish(store: JobStore, job_id: str, how: str) -> None:
    store.progress(job_id, {"step": "last"})
    if how == "succeed":
        store.succeed(job_id, train_result())
    else:
        store.fail(job_id, ErrorInfo(code="internal_error", message="boom"))


def assert_matches(frames: list[Frame], events: list[Event]) -> None:
    assert [(f.id, f.event, f.json()) for f in frames] == [
        (e.id, e.type.value, e.data) for e in events
    ]


def test_events_arrive_live_in_order_and_the_stream_ends_after_the_result(
    client: httpx.Client, store: JobStore
) -> None:
    job_id = new_job(store)
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        frames = events_only(read_frames(response.iter_lines()))
        first = next(frames)
        assert (first.event, first.json()) == ("status", {"status": "queued"})
        worker = threading.Thread(target=run_job, args=(store, job_id))
        worker.start()
        rest = list(frames)  # ends only when the server closes the stream
        worker.join()

    assert_matches([first, *rest], store.events(job_id))
    assert [frame.event for frame in rest] == [
        "status",
        "progress",
        "progress",
        "progress",
        "status",
        "result",
    ]
    assert rest[1].json() == {"stage": "train", "step": 1, "total": 3}


def test_heartbeat_comments_keep_a_quiet_stream_open(client: httpx.Client, store: JobStore) -> None:
    job_id = new_job(store)
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        frames = read_frames(response.iter_lines())
        assert next(frames).event == "status"
        assert next(frames).comment == "heartbeat"
        assert next(frames).comment == "heartbeat"
        store.cancel(job_id)
        ending = [frame for frame in frames if frame.comment is None]
    assert [(frame.event, frame.json()["code"]) for frame in ending[-1:]] == [
        ("error", "cancelled")
    ]


@pytest.mark.parametrize("via", ["header", "query"])
def test_a_client_that_reconnects_gets_every_remaining_event_once(
    client: httpx.Client, store: JobStore, via: str
) -> None:
    job_id = new_job(store)
    store.start(job_id)
    store.progress(job_id, {"step": 1})
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        frames = events_only(read_frames(response.iter_lines()))
        seen = [next(frames) for _ in range(3)]
    wait_until(lambda: sse_clients(client) == 0)  # the server let go of the stream at once

    store.progress(job_id, {"step": 2})  # while the client is away
    last = seen[-1].id
    assert last is not None
    headers = {"Last-Event-ID": last} if via == "header" else {}
    params = {"last_event_id": last} if via == "query" else {}
    url = f"/v1/jobs/{job_id}/events"
    with client.stream("GET", url, headers=headers, params=params) as response:
        frames = events_only(read_frames(response.iter_lines()))
        resumed = [next(frames)]
        run_rest = threading.Thread(target=finish, args=(store, job_id, "succeed"))
        run_rest.start()
        resumed += list(frames)
        run_rest.join()

    assert_matches(seen + resumed, store.events(job_id))


def test_a_late_client_replays_everything_and_the_stream_ends(
    client: httpx.Client, store: JobStore
) -> None:
    job_id = new_job(store)
    run_job(store, job_id, steps=5)
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        frames = list(events_only(read_frames(response.iter_lines())))
    assert_matches(frames, store.events(job_id))
    assert frames[-1].event == "result"


def test_a_client_joining_a_running_job_replays_then_follows(
    client: httpx.Client, store: JobStore
) -> None:
    job_id = new_job(store)
    store.start(job_id)
    store.progress(job_id, {"step": 1})
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        frames = events_only(read_frames(response.iter_lines()))
        replayed = [next(frames) for _ in range(3)]
        worker = threading.Thread(target=finish, args=(store, job_id, "fail"))
        worker.start()
        live = list(frames)
        worker.join()
    assert_matches(replayed + live, store.events(job_id))
    assert live[-1].event == "error"


def test_unknown_jobs_and_bad_resume_ids_are_refused_before_streaming(
    client: httpx.Client, store: JobStore
) -> None:
    missing = client.get("/v1/jobs/nope/events")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"

    job_id = new_job(store)
    bad = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "yesterday"})
    assert bad.status_code == 422
    assert bad.json()["error"]["details"]["fields"] == ["Last-Event-ID"]


def test_many_concurrent_clients_each_get_every_event_once(
    gateway: Gateway, store: JobStore
) -> None:
    jobs = [new_job(store) for _ in range(4)]

    async def follow(http: httpx.AsyncClient, job_id: str, ready: asyncio.Event) -> list[Frame]:
        async with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            frames: list[Frame] = []
            lines: list[str] = []
            async for line in response.aiter_lines():
                lines.append(line)
                if not line:
                    frames += list(events_only(read_frames(iter(lines))))
                    lines = []
                    ready.set()
            return frames

    async def scenario() -> list[list[Frame]]:
        limits = httpx.Limits(max_connections=None)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30, limits=limits) as http:
            readies = [asyncio.Event() for _ in range(40)]
            clients = [
                asyncio.create_task(follow(http, jobs[index % len(jobs)], readies[index]))
                for index in range(20)
            ]
            await asyncio.gather(*(ready.wait() for ready in readies[:20]))
            publisher = asyncio.create_task(asyncio.to_thread(publish))
            # Clients that join while events flow, on streams the hub already follows.
            clients += [
                asyncio.create_task(follow(http, jobs[index % len(jobs)], readies[index]))
                for index in range(20, 40)
            ]
            await publisher
            return list(await asyncio.gather(*clients))

    def publish() -> None:
        for step in range(30):
            for job_id in jobs:
                if step == 0:
                    store.start(job_id)
                store.progress(job_id, {"step": step})
        for job_id in jobs:
            store.succeed(job_id, train_result())

    results = asyncio.run(scenario())
    expected = {job_id: store.events(job_id) for job_id in jobs}
    for index, frames in enumerate(results):
        assert_matches(frames, expected[jobs[index % len(jobs)]])


def test_the_hub_catches_up_a_late_subscriber_without_gaps_or_repeats(
    settings: Settings, store: JobStore
) -> None:
    job_id = new_job(store)

    async def drain(subscription: Subscription) -> list[Event]:
        events: list[Event] = []
        while not events or not events[-1].type.terminal:
            event = await subscription.next(10)
            assert event is not None
            events.append(event)
        return events

    async def scenario() -> tuple[list[Event], list[Event], list[Event]]:
        astore = AsyncJobStore.from_settings(settings)
        reader = AsyncJobStore.from_settings(settings).redis
        hub = EventHub(reader, astore, HubTuning(block_ms=200, batch=2))
        hub.start()
        try:
            async with hub.subscribe(job_id) as first:
                assert (await first.next(10)) is not None
                store.start(job_id)
                for step in range(5):
                    store.progress(job_id, {"step": step})
                assert (await first.next(10)) is not None
                # The hub follows the stream and is ahead of a newcomer from the beginning.
                async with (
                    hub.subscribe(job_id) as newcomer,
                    hub.subscribe(job_id, store.events(job_id)[3].id) as resumer,
                ):
                    store.succeed(job_id, train_result())
                    rest_first, all_newcomer, rest_resumer = await asyncio.gather(
                        drain(first), drain(newcomer), drain(resumer)
                    )
            assert hub.subscribers == 0
            return rest_first, all_newcomer, rest_resumer
        finally:
            await hub.stop()
            await astore.redis.aclose()
            await reader.aclose()

    rest_first, all_newcomer, rest_resumer = asyncio.run(scenario())
    events = store.events(job_id)
    assert all_newcomer == events
    assert rest_first == events[2:]
    assert rest_resumer == events[4:]


def new_prediction(store: JobStore) -> str:
    return store.create(Job(id=new_job_id(), type=JobType.predict, params={"texts": ["t"]})).id


def answer(store: JobStore, job_id: str) -> None:
    store.claim_many([job_id], "agnews.predict")
    store.finish_many([(job_id, predict_result())])


def test_a_prediction_streams_its_status_then_its_answer_without_a_stream_of_its_own(
    client: httpx.Client, store: JobStore
) -> None:
    job_id = new_prediction(store)
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        frames = events_only(read_frames(response.iter_lines()))
        first = next(frames)
        assert (first.id, first.event, first.json()) == ("0-1", "status", {"status": "queued"})
        worker = threading.Thread(target=answer, args=(store, job_id))
        worker.start()
        rest = list(frames)
        worker.join()
    assert [(frame.id, frame.event) for frame in rest] == [("0-2", "result")]
    assert rest[0].json() == predict_result().model_dump(mode="json")

    # Late, or resumed after its status: the answer from the job's record.
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        late = list(events_only(read_frames(response.iter_lines())))
    assert [(frame.event, frame.json()) for frame in late] == [
        ("status", {"status": "succeeded"}),
        ("result", predict_result().model_dump(mode="json")),
    ]
    headers = {"Last-Event-ID": "0-1"}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        resumed = list(events_only(read_frames(response.iter_lines())))
    assert [frame.id for frame in resumed] == ["0-2"]
