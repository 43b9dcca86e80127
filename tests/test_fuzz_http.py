"""The HTTP API under hostile input, against a live uvicorn server on loopback.

Schemathesis generates requests for every operation of the server's own OpenAPI schema (valid and
schema-violating, a bounded number per operation) and checks each answer: never a 5xx, and the
status, content type, headers and body are what the schema documents; requests without the token
must be refused. Hand-written cases add what a generator does not think of: broken multipart bodies,
huge headers and URLs, wrong content types, unknown and hostile model names, ids and run names that
try to walk the file system, and a runs folder holding damaged runs. Every refusal is a 4xx with a
one-line {"error"}; the server logs no traceback and keeps serving.
"""
from __future__ import annotations

import io
import json
import logging
import shutil
import socket
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance, ignored_auth,  # noqa: E402
                                               negative_data_rejection, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)

from test_serve import LiveServer  # noqa: E402  (tests/ is on sys.path)

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STATS: Counter = Counter()  # what was sent and seen, printed at the end of the module (pytest -s)


class Tracebacks(logging.Handler):
    """Collects every log record that carries an exception (uvicorn logs a handler's crash so)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        if record.exc_info or "Traceback" in record.getMessage():
            self.records.append(record)


def _png(size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(size[0] * size[1] * 3) % 251).astype(np.uint8).reshape(size[1], size[0], 3)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def runs_folder(trained_run, tmp_path_factory) -> Path:
    """A --runs folder: a copy of the trained run, and damaged runs (garbage model.json, torn
    metrics.csv, an empty folder, a run whose images are gone)."""
    root = tmp_path_factory.mktemp("fuzz-runs")
    shutil.copytree(trained_run, root / "good")
    for name, damage in {"garbage-json": {"model.json": b"{not json"},
                         "torn-metrics": {"metrics.csv": b"epoch,val_loss\n1,0.5\n2,"},
                         "binary-json": {"model.json": b"\x00\xff" * 64}}.items():
        shutil.copytree(trained_run, root / name)
        for file, data in damage.items():
            (root / name / file).write_bytes(data)
    (root / "empty").mkdir()
    shutil.copytree(trained_run, root / "nested" / "images-gone")
    return root


@pytest.fixture(scope="module")
def server(trained_run, runs_folder):
    from transferlab.serve import create_app

    app = create_app([trained_run], token=TOKEN, max_upload_mb=1, max_images=4,
                     runs_dir=runs_folder)
    catcher = Tracebacks()
    loggers = [logging.getLogger(n) for n in ("uvicorn.error", "uvicorn", "fastapi", "starlette")]
    with LiveServer(app) as live:
        for lg in loggers:  # after uvicorn configured its logging (which replaces handlers)
            lg.addHandler(catcher)
        live.tracebacks = catcher.records
        yield live
    for lg in loggers:
        lg.removeHandler(catcher)
    print("\nfuzz_http:", dict(STATS))
    assert not catcher.records, [r.getMessage() for r in catcher.records]


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection, ignored_auth]


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_its_schema_says(case, server):
    STATS["schemathesis cases"] += 1
    response = case.call_and_validate(headers=AUTH, checks=CHECKS, timeout=60)
    STATS[f"status {response.status_code // 100}xx"] += 1
    assert response.status_code < 500
    assert not server.tracebacks


def test_the_schema_documents_every_answer(server):
    doc = httpx.get(f"{server.url}/openapi.json").json()
    predict = doc["paths"]["/api/models/{name}/predict"]["post"]
    assert "multipart/form-data" in predict["requestBody"]["content"]
    assert {"200", "4XX", "503"} <= set(predict["responses"])
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "HTTPValidationError" not in json.dumps(doc)  # FastAPI's {"detail"} is never what the server sends


# --- hand-written hostile requests ---------------------------------------------------------------
def raw(server, request: bytes, timeout: float = 3) -> tuple[int | None, bytes]:
    """Send bytes as they are (what httpx would refuse to build); the status and body, or None when
    the server closed the connection without an answer (or left it waiting `timeout` seconds: a body
    shorter than its Content-Length leaves uvicorn waiting for the rest, as it should)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
                head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
                if length and len(body) >= length[0]:
                    break
        except (ConnectionResetError, socket.timeout):
            pass
    answer = b"".join(chunks)
    if not answer.startswith(b"HTTP/1.1 "):
        return None, answer
    return int(answer.split()[1]), answer.partition(b"\r\n\r\n")[2]


def multipart_request(server, model: str, body: bytes, content_type: str, extra: str = "") -> bytes:
    return (f"POST /api/models/{model}/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n").encode() + body


def part(name="images", filename="a.png", data=b"", headers="") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return f"--B\r\nContent-Disposition: {disposition}\r\n{headers}Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n"


def hostile_cases(run: str) -> dict[str, tuple]:
    """name -> ("raw", bytes) or (method, path, httpx keyword arguments)."""
    png = _png()
    mp = "multipart/form-data; boundary=B"
    predict = f"/api/models/{run}/predict"
    return {
        # multipart bodies
        "no boundary": ("raw", multipart_request(None, run, part(data=png) + b"--B--\r\n", "multipart/form-data")),
        "boundary mismatch": ("raw", multipart_request(None, run, part(data=png) + b"--B--\r\n", "multipart/form-data; boundary=C")),
        "unterminated": ("raw", multipart_request(None, run, part(data=png), mp)),
        "no closing delimiter, truncated image": ("raw", multipart_request(None, run, part(data=png[:40]), mp)),
        "part without disposition": ("raw", multipart_request(None, run, b"--B\r\nContent-Type: image/png\r\n\r\n" + png + b"\r\n--B--\r\n", mp)),
        "field, not a file": ("raw", multipart_request(None, run, part(filename=None, data=b"hello") + b"--B--\r\n", mp)),
        "file under another field name": ("raw", multipart_request(None, run, part(name="x", data=b"hello") + b"--B--\r\n", mp)),
        "more files than max_images": ("raw", multipart_request(None, run, part(data=png) * 9 + b"--B--\r\n", mp)),
        "10000 fields": ("raw", multipart_request(None, run, part(filename=None, data=b"1") * 10000 + b"--B--\r\n", mp)),
        "8 KiB part header": ("raw", multipart_request(None, run, part(data=png, headers=f"X-Pad: {'a' * 8192}\r\n") + b"--B--\r\n", mp)),
        "quote and NUL in filename": ("raw", multipart_request(None, run, part(filename='a"\x00/../../etc/passwd', data=png) + b"--B--\r\n", mp)),
        "non-UTF-8 part header": ("raw", multipart_request(None, run, b"--B\r\nContent-Disposition: form-data; name=\"images\"; filename=\"\xff\xfe.png\"\r\n\r\n" + png + b"\r\n--B--\r\n", mp)),
        "200-byte boundary": ("raw", multipart_request(None, run, f"--{'b' * 200}\r\n".encode() + part(data=png)[4:] + f"--{'b' * 200}--\r\n".encode(), f"multipart/form-data; boundary={'b' * 200}")),
        "Content-Length lies (short)": ("raw", multipart_request(None, run, part(data=png) + b"--B--\r\n", mp).replace(b"Content-Length: ", b"Content-Length: 1", 1)[:-10]),
        "negative Content-Length": ("raw", multipart_request(None, run, b"x", mp).replace(b"Content-Length: 1", b"Content-Length: -1")),
        # headers and URLs
        "60 KiB header": ("GET", "/api/health", {"headers": {**AUTH, "X-Big": "a" * 60_000}}),
        "2000 headers": ("raw", b"GET /api/health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(2000)) + b"Connection: close\r\n\r\n"),
        "60 KiB URL": ("GET", "/api/runs/" + "a" * 60_000, {}),
        "header without a colon": ("raw", b"GET /api/health HTTP/1.1\r\nHost: x\r\nnonsense\r\n\r\n"),
        "bad request line": ("raw", b"GARBAGE\r\n\r\n"),
        "HTTP/0.9": ("raw", b"GET /api/health\r\n\r\n"),
        "binary request": ("raw", bytes(range(256)) * 4),
        "token with NUL and unicode": ("raw", b"GET /api/health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \x00\xc3\xa9\r\nConnection: close\r\n\r\n"),
        # content types
        "application/json": ("POST", predict, {"content": b'{"images": []}', "headers": {"Content-Type": "application/json"}}),
        "urlencoded images field": ("POST", predict, {"content": b"images=abc", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}),
        "multipart/mixed": ("POST", predict, {"content": part(data=png) + b"--B--\r\n", "headers": {"Content-Type": "multipart/mixed; boundary=B"}}),
        "no content type": ("POST", predict, {"content": png}),
        "garbage content type": ("POST", predict, {"content": png, "headers": {"Content-Type": "multipart/form-data;;;boundary==\"\x7f"}}),
        "gzip body": ("POST", predict, {"content": b"\x1f\x8b" + b"\x00" * 50, "headers": {"Content-Type": mp, "Content-Encoding": "gzip"}}),
        # model names
        "unknown model": ("POST", "/api/models/nope/predict", {"files": [("images", ("a.png", png, "image/png"))]}),
        "10 KiB model name": ("POST", f"/api/models/{'m' * 10_000}/predict", {"files": [("images", ("a.png", png, "image/png"))]}),
        "unicode model name": ("POST", "/api/models/%F0%9F%90%8D%E2%80%AE/predict", {"files": [("images", ("a.png", png, "image/png"))]}),
        "invalid UTF-8 model name": ("POST", "/api/models/%FF%FE/predict", {"files": [("images", ("a.png", png, "image/png"))]}),
        "NUL in model name": ("POST", "/api/models/a%00b/predict", {"files": [("images", ("a.png", png, "image/png"))]}),
        "dunder model name": ("POST", "/api/models/__class__/predict", {"files": [("images", ("a.png", png, "image/png"))]}),
        "top 10**40": ("POST", predict, {"files": [("images", ("a.png", png, "image/png"))], "params": {"top": 10**40}}),
        "threshold nan": ("POST", predict, {"files": [("images", ("a.png", png, "image/png"))], "params": {"threshold": "nan"}}),
        "threshold inf": ("POST", predict, {"files": [("images", ("a.png", png, "image/png"))], "params": {"threshold": "inf"}}),
        # ids and run names that walk the file system
        "../ in run name": ("GET", "/api/runs/..%2F..%2F..%2Fetc", {}),
        "..:.. run key": ("GET", "/api/runs/..:..:etc", {}),
        "absolute run name": ("GET", "/api/runs/%2Fetc%2Fpasswd", {}),
        "../ history": ("GET", "/api/runs/..%2Fgood/history", {}),
        "dot run": ("GET", "/api/runs/./history", {}),
        "run name %2e%2e": ("GET", "/api/runs/%2e%2e/history", {}),
        "image id path": ("GET", f"/api/runs/{run}/images/..%2F..%2Fmodel.json", {}),
        "image id -1": ("GET", f"/api/runs/{run}/images/-1", {}),
        "image id 10**30": ("GET", f"/api/runs/{run}/images/{10**30}", {}),
        "image id 1e3": ("GET", f"/api/runs/{run}/images/1e3", {}),
        "static ../": ("GET", "/static/..%2F..%2Fserve%2Fapp.py", {}),
        "static absolute": ("GET", "/static/%2Fetc%2Fpasswd", {}),
        # the damaged runs of the runs folder
        "garbage model.json": ("GET", "/api/runs/garbage-json", {}),
        "garbage model.json history": ("GET", "/api/runs/garbage-json/history", {}),
        "binary model.json": ("GET", "/api/runs/binary-json", {}),
        "torn metrics.csv": ("GET", "/api/runs/torn-metrics/history", {}),
        "torn metrics.csv view": ("GET", "/api/runs/torn-metrics", {}),
        "empty folder": ("GET", "/api/runs/empty", {}),
        "empty folder history": ("GET", "/api/runs/empty/history", {}),
        "images gone": ("GET", "/api/runs/nested:images-gone/images/0", {}),
        # methods
        "DELETE a model": ("DELETE", predict, {}),
        "PUT health": ("PUT", "/api/health", {}),
    }


# requests that are in fact acceptable: answered 200 (a filename is a label only; a run's curves read
# without its model.json; a thumbnail comes from the run's index, not from the run folder)
MAY_SUCCEED = {"quote and NUL in filename", "non-UTF-8 part header", "60 KiB header", "garbage model.json history",
               "torn metrics.csv", "torn metrics.csv view", "empty folder history", "images gone"}
# broken HTTP itself: uvicorn answers 400 or closes the connection, before the app sees anything
PROTOCOL = {"bad request line", "HTTP/0.9", "binary request", "header without a colon", "2000 headers",
            "negative Content-Length", "Content-Length lies (short)", "token with NUL and unicode"}


def test_hostile_requests_get_a_4xx_in_one_line_and_the_server_keeps_serving(server, trained_run, runs_folder):
    for image in (runs_folder / "nested" / "images-gone").rglob("*.png"):
        image.unlink()
    good = [("images", ("ok.png", _png(), "image/png"))]
    statuses = Counter()
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        for what, (method, *rest) in hostile_cases(trained_run.name).items():
            STATS["hand-written bad requests"] += 1
            if method == "raw":
                status, body = raw(server, rest[0])
            else:
                path, kw = rest
                r = client.request(method, path, **kw)
                status, body = r.status_code, r.content
            statuses[status] += 1
            if what in MAY_SUCCEED:
                assert status is not None and status < 500, (what, status, body[:300])
            elif what in PROTOCOL:
                assert status is None or 400 <= status < 500, (what, status, body[:300])
            else:
                assert status is not None and 400 <= status < 500, (what, status, body[:300])
                message = json.loads(body)["error"]  # the app's own refusal: {"error": "one line"}
                assert message and "\n" not in message, (what, message)
            assert not server.tracebacks, (what, [r.getMessage() for r in server.tracebacks])
            after = client.post(f"/api/models/{trained_run.name}/predict", files=good)
            assert after.status_code == 200 and after.json()[0]["status"] == "ok", (what, after.text)
    STATS.update({f"hand-written -> {k or 'closed'}": v for k, v in statuses.items()})
    assert not server.tracebacks
