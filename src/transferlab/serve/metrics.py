"""/metrics: the server's Prometheus metrics, in a registry of its own per app (several apps in one
process, as in the tests, never add to each other's counters).

HTTP requests by route template, method and status, and their latency per route; predict requests a
served model answered with a 4xx/5xx, by model and status; per model, its queue depth, whether it is
loaded, and the size and inference time of every batch. The process's own (RSS, CPU, open files)
come with prometheus-client. Label values are route templates, known methods and served model names
only: what a client sends (a URL, an unknown model, a method) never becomes a new time series.
"""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder
from starlette.routing import Match

PREDICT = "/api/models/{name}/predict"
METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})
# seconds: Prometheus' default buckets, and longer ones for requests that queue under load (p99 of the
# soak at concurrency 64 is seconds)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The app's metrics; `state` maps each served model to "loading", "ready" or why it failed, and
    `batchers` each to its DynamicBatcher (read when scraped)."""

    def __init__(self, state: dict[str, str], batchers: dict, max_batch: int):
        self.registry = CollectorRegistry()
        self.served = frozenset(state)
        self.requests = Counter("transferlab_requests", "HTTP requests answered, by route template, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("transferlab_request_duration_seconds",
                                 "time from the request's arrival to the end of its answer, by route template",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.model_errors = Counter("transferlab_model_errors",
                                    "predict requests to a served model answered with a 4xx or 5xx, by status",
                                    ["model", "status"], registry=self.registry)
        sizes = sorted({1, max_batch} | {2 ** i for i in range(max_batch.bit_length()) if 2 ** i <= max_batch})
        self.batch_size = Histogram("transferlab_batch_size", "images per batch through the model", ["model"],
                                    buckets=sizes, registry=self.registry)
        self.batch_seconds = Histogram("transferlab_batch_duration_seconds", "inference time of one batch",
                                       ["model"], registry=self.registry)
        self.registry.register(_ModelGauges(batchers, state))
        ProcessCollector(registry=self.registry)

    def on_batch(self, model: str):
        """The DynamicBatcher callback of `model`: (images, seconds) of each batch it ran."""
        size, seconds = self.batch_size.labels(model), self.batch_seconds.labels(model)

        def observe(images: int, elapsed: float) -> None:
            size.observe(images)
            seconds.observe(elapsed)
        return observe

    def observe(self, scope: dict, routes: list, status: int, elapsed: float) -> None:
        """Count and time one answered request."""
        route, params = _route(scope, routes)
        method = scope["method"] if scope["method"] in METHODS else "other"
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(elapsed)
        if route == PREDICT and status >= 400 and params.get("name") in self.served:
            self.model_errors.labels(params["name"], str(status)).inc()

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The metrics in the format the scraper asks for (OpenMetrics or Prometheus text), and its type."""
        try:
            encoder, content_type = choose_encoder(accept or "")
            return encoder(self.registry), content_type
        except (ValueError, TypeError):  # an Accept version prometheus-client cannot parse: the plain text format
            return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _route(scope: dict, routes: list) -> tuple[str, dict]:
    """The route template a request went to, and its path parameters; a request refused before routing
    (a body over the limit by its Content-Length) is matched here, one no route matches is "unmatched"."""
    if "route" in scope:
        return scope["route"].path, scope.get("path_params", {})
    for route in routes:
        match, child = route.matches(scope)
        if match is not Match.NONE:
            return route.path, child.get("path_params", {})
    return "unmatched", {}


class _ModelGauges:
    """Queue depth and loaded state per model, read when scraped."""

    def __init__(self, batchers: dict, state: dict[str, str]):
        self.batchers, self.state = batchers, state

    def collect(self):
        depth = GaugeMetricFamily("transferlab_queue_depth", "images waiting for a batch", labels=["model"])
        loaded = GaugeMetricFamily("transferlab_model_loaded", "1 once the model is loaded and warmed up, else 0",
                                   labels=["model"])
        for name, batcher in self.batchers.items():
            depth.add_metric([name], batcher.queued)
            loaded.add_metric([name], float(self.state[name] == "ready"))
        yield depth
        yield loaded


class Instrument:
    """ASGI middleware, outermost: every HTTP request's status and time go to `metrics`, whichever layer
    answered it (the body limit, a route, a validation error)."""

    def __init__(self, app, metrics: Metrics, routes: list):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        """Pass the request on, noting the status sent and the time until the app returns."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def noted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noted)
        finally:
            self.metrics.observe(scope, self.routes, status, time.perf_counter() - start)
