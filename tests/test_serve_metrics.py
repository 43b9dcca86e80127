"""/metrics and the probes against a real uvicorn server on loopback: the counters and histograms move by
what was sent, each app counts only its own requests, and readiness says 503 (naming the model) until a
model is warm while liveness answers throughout."""
from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from test_serve import LiveServer  # noqa: E402  (tests/ is on sys.path)

TOKEN = "metrics-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PREDICT = "/api/models/{name}/predict"


def scrape(url: str) -> dict[tuple, float]:
    """Every sample of /metrics: (name, sorted label pairs) -> value."""
    r = httpx.get(f"{url}/metrics", headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def sample(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))), 0.0)


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 40), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(trained_run):
    from transferlab.serve import create_app

    app = create_app([trained_run], token=TOKEN, max_batch=4)
    with LiveServer(app) as live:
        live.model = trained_run.name
        yield live


def wait_ready(url: str, seconds: float = 120) -> None:
    end = time.time() + seconds
    while httpx.get(f"{url}/api/health/ready", timeout=30).status_code != 200:
        assert time.time() < end, "the model never became ready"
        time.sleep(0.05)


def test_metrics_count_what_was_sent(server):
    wait_ready(server.url)
    model, url = server.model, server.url
    before = scrape(url)
    health = httpx.get(f"{url}/api/health", headers=AUTH).json()["models"][model]
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as c:
        for i in range(3):  # 3 good requests of 2 images each
            r = c.post(f"/api/models/{model}/predict", files=[("images", (f"{i}{j}.png", png(i * 2 + j), "image/png"))
                                                              for j in range(2)])
            assert r.status_code == 200 and [x["status"] for x in r.json()] == ["ok", "ok"]
        for _ in range(2):
            assert c.post(f"/api/models/{model}/predict", files=[("images", ("t.jpg", b"text" * 30, "image/jpeg"))]).status_code == 415
        assert c.post("/api/models/no-such-model/predict", files=[("images", ("a.png", png(0), "image/png"))]).status_code == 404
        assert c.post(f"/api/models/{model}/predict", params={"top": 0}, files=[("images", ("a.png", png(0), "image/png"))]).status_code == 422
        assert c.get("/api/runs/" + "x" * 300).status_code == 404
        assert c.request("BREW", "/api/health").status_code == 405
    assert httpx.post(f"{url}/api/models/{model}/predict", files=[("images", ("a.png", png(0), "image/png"))]).status_code == 401
    assert httpx.get(f"{url}/metrics").status_code == 401  # /metrics follows the token as /api does
    after = scrape(url)
    after_health = httpx.get(f"{url}/api/health", headers=AUTH).json()["models"][model]

    def moved(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    requests, latency = "transferlab_requests_total", "transferlab_request_duration_seconds"
    for status, count in {200: 3, 415: 2, 404: 1, 422: 1, 401: 1}.items():
        assert moved(requests, route=PREDICT, method="POST", status=status) == count, status
    assert moved(f"{latency}_count", route=PREDICT, method="POST") == 8
    assert moved(f"{latency}_bucket", route=PREDICT, method="POST", le="+Inf") == 8
    assert moved(f"{latency}_sum", route=PREDICT, method="POST") > 0
    assert moved(requests, route="/api/runs/{name}", method="GET", status=404) == 1  # the template, not the URL
    assert moved(requests, route="/api/health", method="other", status=405) == 1  # an unknown method is "other"
    assert moved(requests, route="/metrics", method="GET", status=401) == 1
    assert moved(requests, route="/metrics", method="GET", status=200) == 1  # the first scrape
    # errors per model: the 4xx of requests to a served model; an unknown name never becomes a label
    assert moved("transferlab_model_errors_total", model=model, status=415) == 2
    assert moved("transferlab_model_errors_total", model=model, status=422) == 1
    assert moved("transferlab_model_errors_total", model=model, status=401) == 1
    assert not [k for k in after if "no-such-model" in str(k)]
    # batches: 6 images went through the model, in as many batches as /api/health counted
    batches = after_health["batches"] - health["batches"]
    assert after_health["images"] - health["images"] == 6 and 2 <= batches <= 6
    assert moved("transferlab_batch_size_sum", model=model) == 6
    assert moved("transferlab_batch_size_count", model=model) == batches
    assert moved("transferlab_batch_size_bucket", model=model, le="4.0") == batches  # never over max_batch
    assert moved("transferlab_batch_duration_seconds_count", model=model) == batches
    assert sample(after, "transferlab_queue_depth", model=model) == 0
    assert sample(after, "transferlab_model_loaded", model=model) == 1
    assert sample(after, "process_resident_memory_bytes") > 50e6


def test_metrics_negotiate_openmetrics_and_survive_a_bad_accept(server):
    r = httpx.get(f"{server.url}/metrics", headers={**AUTH, "Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")
    r = httpx.get(f"{server.url}/metrics", headers={**AUTH, "Accept": "application/openmetrics-text; version=x.y"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")


def test_readiness_waits_for_the_model_and_liveness_does_not(server, trained_run):
    """The run's classifier, its ONNX engine build held at a gate: ready is 503 naming it, live is 200, a
    prediction sent meanwhile waits; the gate opened, all three succeed. The app has its own registry:
    the other server's requests are not in its counts."""
    from transferlab.api import load
    from transferlab.serve import create_app

    net = load(str(trained_run))
    gate, build = threading.Event(), net.onnx_forward

    def gated(threads):
        assert gate.wait(120)
        return build(threads)

    net.onnx_forward = gated
    app = create_app([net], token=TOKEN)
    name = next(iter(app.state.models))
    with LiveServer(app) as live:
        assert httpx.get(f"{live.url}/api/health/live").json() == {"status": "ok"}  # no token for the probes
        r = httpx.get(f"{live.url}/api/health/ready")
        assert r.status_code == 503 and r.json() == {"error": f"not ready: {name} is loading"}
        assert r.headers["Retry-After"] == "1"
        health = httpx.get(f"{live.url}/api/health", headers=AUTH).json()
        assert health["status"] == "ok" and health["ready"] is False and health["models"][name]["state"] == "loading"
        loading = scrape(live.url)
        assert sample(loading, "transferlab_model_loaded", model=name) == 0
        assert sample(loading, "transferlab_requests_total", route=PREDICT, method="POST", status=200) == 0
        answer = {}
        sender = threading.Thread(target=lambda: answer.setdefault("r", httpx.post(
            f"{live.url}/api/models/{name}/predict", headers=AUTH, timeout=120,
            files=[("images", ("a.png", png(1), "image/png"))])))
        sender.start()
        sender.join(0.5)
        assert sender.is_alive() and "r" not in answer  # waits behind the warm-up
        gate.set()
        sender.join(120)
        assert answer["r"].status_code == 200 and answer["r"].json()[0]["status"] == "ok"
        wait_ready(live.url)
        assert httpx.get(f"{live.url}/api/health", headers=AUTH).json()["ready"] is True
        assert sample(scrape(live.url), "transferlab_model_loaded", model=name) == 1


def test_a_model_that_fails_to_load_is_named_and_refused(trained_run):
    from transferlab.api import load
    from transferlab.serve import create_app

    net = load(str(trained_run))

    def broken(threads):
        raise RuntimeError("no engine today\nsecond line")

    net.onnx_forward = broken
    app = create_app([net], backend="onnxruntime")
    name = next(iter(app.state.models))
    with LiveServer(app) as live:
        end = time.time() + 60
        while app.state.model_state[name] == "loading":
            assert time.time() < end
            time.sleep(0.05)
        r = httpx.get(f"{live.url}/api/health/ready")
        assert r.status_code == 503 and r.json()["error"] == f"not ready: {name} failed to load (no engine today)"
        r = httpx.post(f"{live.url}/api/models/{name}/predict", files=[("images", ("a.png", png(1), "image/png"))])
        assert r.status_code == 503 and "failed to load (no engine today)" in r.json()["error"]
        assert httpx.get(f"{live.url}/api/health/live").status_code == 200
