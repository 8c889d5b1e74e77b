"""Prometheus metrics: requests by route template and status, SSE clients, Celery queue depths,
and the predict workers by the model version and form they serve."""

import asyncio
import logging
import time

import redis.asyncio
from celery import Celery
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.asgi import HttpMiddleware
from shared.broker import queue_depths
from shared.contracts.stages import QUEUES
from shared.fleet import serving_workers
from shared.settings import Settings

log = logging.getLogger("gateway")


class Metrics:
    """One registry per app, so that several apps in one process never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "agnews_gateway_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "agnews_gateway_request_duration_seconds",
            "Time to the end of the response by method and route template",
            ["method", "route"],
            registry=self.registry,
        )
        self.sse_clients = Gauge(
            "agnews_gateway_sse_clients",
            "Server-sent event streams open now",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "agnews_queue_depth",
            "Tasks waiting in each Celery queue",
            ["queue"],
            registry=self.registry,
        )
        self.serving_workers = Gauge(
            "agnews_serving_workers",
            "Predict workers that announced themselves lately, by model version and form",
            ["version", "form"],
            registry=self.registry,
        )
        self.shed = Counter(
            "agnews_gateway_shed",
            "Requests refused at once because the fleet could not answer them in time, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.predict_pending = Gauge(
            "agnews_predict_pending_texts",
            "Texts of predict jobs not yet answered, as this gateway last read it",
            registry=self.registry,
        )
        self.predict_rate = Gauge(
            "agnews_predict_answer_rate",
            "Texts per second the predict fleet answers, as this gateway estimates it",
            registry=self.registry,
        )
        self.queue_depth_up = Gauge(
            "agnews_queue_depth_up",
            "1 when the last queue depth probe reached the broker, else 0",
            registry=self.registry,
        )


def route_template(scope: Scope) -> str:
    """The matched route's template, so that job ids never become label values."""
    route = scope.get("route")
    if isinstance(route, Route):
        mount: str = scope.get("root_path", "")[len(scope.get("app_root_path", "")) :]
        return mount + route.path
    if isinstance(route, Mount) and isinstance(route.app, StaticFiles):
        return "static"
    return "unmatched"


class MetricsMiddleware(HttpMiddleware):
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, watch)
        finally:
            route, method = route_template(scope), scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)


class QueueProbe:
    """Celery queue depths, read in a thread; one probe at a time however often it is asked."""

    def __init__(self, celery: Celery, timeout_s: float) -> None:
        self.celery = celery
        self.timeout_s = timeout_s
        self._probe: asyncio.Future[dict[str, int]] | None = None

    async def update(self, metrics: Metrics) -> None:
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(asyncio.to_thread(queue_depths, self.celery))
            self._probe.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            depths = await asyncio.wait_for(asyncio.shield(self._probe), self.timeout_s)
        except Exception as exc:
            log.warning("queue depths unavailable: %s", str(exc) or type(exc).__name__)
            metrics.queue_depth_up.set(0)
            for queue in QUEUES:
                metrics.queue_depth.labels(queue).set(float("nan"))
            return
        metrics.queue_depth_up.set(1)
        for queue, depth in depths.items():
            metrics.queue_depth.labels(queue).set(depth)


async def update_serving(
    metrics: Metrics, client: "redis.asyncio.Redis", settings: Settings
) -> None:
    """The serving workers' gauge from their announcements; left as it was if Redis is away."""
    try:
        workers = await serving_workers(client, settings)
    except Exception as exc:
        log.warning("serving workers unavailable: %s", str(exc) or type(exc).__name__)
        return
    counts: dict[tuple[str, str], int] = {}
    for worker in workers:
        counts[(worker.version, worker.form)] = counts.get((worker.version, worker.form), 0) + 1
    metrics.serving_workers.clear()
    for (version, form), count in counts.items():
        metrics.serving_workers.labels(version, form).set(count)
