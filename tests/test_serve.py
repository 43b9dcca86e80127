"""`transferlab serve` against a real uvicorn server on a free loopback port: same records as
`transferlab predict --json`, concurrency with dynamic batching, a full queue answering 503, and every
kind of bad request refused with a 4xx while the server keeps serving."""
from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    """A port nothing listens on, on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving an app in a background thread, on 127.0.0.1:free port."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def face_photo(tmp_path_factory) -> Path:
    """scikit-image's astronaut (one face) as a JPEG."""
    from skimage import data as skdata

    path = tmp_path_factory.mktemp("faces") / "astronaut.jpg"
    Image.fromarray(skdata.astronaut()).save(path, quality=92)
    return path


@pytest.fixture(scope="module")
def server(trained_run):
    """A classifier run, the pretrained lite0 and the front face detector, behind a token, 2 MiB uploads."""
    from transferlab.serve import create_app

    app = create_app([trained_run, "efficientnet_lite0", "blazeface_front"], token=TOKEN, max_upload_mb=2,
                     max_wait_ms=10)
    with LiveServer(app) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


def jpeg_bytes(path) -> bytes:
    return Path(path).read_bytes()


def post(client, model, files, **params):
    return client.post(f"/api/models/{model}/predict", files=files, params=params)


def test_health_and_models_describe_what_is_served(client, trained_run):
    health = client.get("/api/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    models = {m["name"]: m for m in client.get("/api/models").json()}
    assert set(models) == {trained_run.name, "efficientnet_lite0", "blazeface_front"}
    run = models[trained_run.name]
    assert run["kind"] == "classifier" and run["run"] and run["classes"] == [f"digit_{i}" for i in range(4)]
    assert run["metrics"]["val_acc"] == json.loads((trained_run / "model.json").read_text())["metrics"]["val_acc"]
    assert run["preprocessing"]["input_size"] == 48
    assert models["blazeface_front"]["kind"] == "detector" and models["efficientnet_lite0"]["num_classes"] == 1000
    assert client.get("/openapi.json").json()["paths"]["/api/models/{name}/predict"]["post"]


def _cli_records(capsys, argv) -> list[dict]:
    from transferlab.cli.main import main

    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _same_top(server_records, cli_records):
    assert len(server_records) == len(cli_records)
    for s, c in zip(server_records, cli_records):
        assert s["path"] == Path(c["path"]).name and s["status"] == c["status"] == "ok"
        assert [t["label"] for t in s["top"]] == [t["label"] for t in c["top"]]
        assert [t["index"] for t in s["top"]] == [t["index"] for t in c["top"]]
        # the server runs the ONNX Runtime engine, the CLI PyTorch for a few images: same graph, float rounding
        assert np.allclose([t["prob"] for t in s["top"]], [t["prob"] for t in c["top"]], atol=1e-4)


def test_predictions_equal_the_cli_json(client, capsys, trained_run, digits_folder, sample_photos, face_photo):
    digits = sorted(digits_folder.rglob("*.png"))[::20][:8]
    got = post(client, trained_run.name, [("images", (p.name, p.read_bytes(), "image/png")) for p in digits], top=3)
    assert got.status_code == 200, got.text
    _same_top(got.json(), _cli_records(capsys, ["predict", *map(str, digits), "--model", str(trained_run),
                                                "--top", "3", "--json"]))

    photos = [sample_photos["china"], sample_photos["flower"]]
    got = post(client, "efficientnet_lite0", [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in photos])
    assert got.status_code == 200, got.text
    _same_top(got.json(), _cli_records(capsys, ["predict", *map(str, photos), "--json"]))

    got = post(client, "blazeface_front", [("images", (face_photo.name, face_photo.read_bytes(), "image/jpeg"))])
    assert got.status_code == 200, got.text
    cli = _cli_records(capsys, ["detect", "predict", str(face_photo), "--json"])
    assert len(cli[0]["detections"]) == 1  # the astronaut's face
    assert got.json()[0]["detections"] == cli[0]["detections"]
    assert got.json()[0]["path"] == face_photo.name


def test_64_concurrent_requests_all_succeed_and_are_batched(server, sample_photos):
    data = sample_photos["flower"].read_bytes()
    before = httpx.get(f"{server.url}/api/health", headers=AUTH).json()["models"]["efficientnet_lite0"]

    async def run():
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=120) as c:
            return await asyncio.gather(*(c.post("/api/models/efficientnet_lite0/predict",
                                                 files=[("images", ("f.jpg", data, "image/jpeg"))]) for _ in range(64)))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 64
    labels = {r.json()[0]["top"][0]["label"] for r in responses}
    assert len(labels) == 1
    after = httpx.get(f"{server.url}/api/health", headers=AUTH).json()["models"]["efficientnet_lite0"]
    images, batches = after["images"] - before["images"], after["batches"] - before["batches"]
    assert images == 64 and batches < 64  # several requests went through the model together


def test_a_full_queue_answers_503_with_retry_after(trained_run, digits_folder):
    from transferlab.serve import create_app

    app = create_app([trained_run], max_batch=1, max_queue=1)
    data = sorted(digits_folder.rglob("*.png"))[0].read_bytes()
    with LiveServer(app) as live:
        async def run():
            async with httpx.AsyncClient(base_url=live.url, timeout=120) as c:
                return await asyncio.gather(*(c.post(f"/api/models/{trained_run.name}/predict",
                                                     files=[("images", ("d.png", data, "image/png"))])
                                              for _ in range(48)))

        responses = asyncio.run(run())
        codes = [r.status_code for r in responses]
        assert set(codes) == {200, 503}, codes
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["Retry-After"] == "1" and "queue is full" in busy.json()["error"]
        again = httpx.post(f"{live.url}/api/models/{trained_run.name}/predict",
                           files=[("images", ("d.png", data, "image/png"))], timeout=60)
        assert again.status_code == 200


def _truncated_jpeg(path) -> bytes:
    data = Path(path).read_bytes()
    return data[: len(data) // 3]


def _huge_png() -> bytes:
    """A 20000x20000 PNG that compresses to a few hundred KiB: a decompression bomb."""
    buf = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(server, client, trained_run, sample_photos):
    good_file = [("images", ("ok.png", _digit_png(), "image/png"))]
    model = f"/api/models/{trained_run.name}/predict"
    bomb = _huge_png()
    assert len(bomb) < 2 * 1024 * 1024  # under the byte limit: the pixel limit must catch it
    cases = {
        "empty body": lambda: client.post(model, content=b"", headers={"Content-Type": "multipart/form-data; boundary=x"}),
        "no multipart": lambda: client.post(model, content=b"hello", headers={"Content-Type": "text/plain"}),
        "empty file": lambda: post(client, trained_run.name, [("images", ("e.jpg", b"", "image/jpeg"))]),
        "text as .jpg": lambda: post(client, trained_run.name, [("images", ("t.jpg", b"hello, not a JPEG" * 20, "image/jpeg"))]),
        "truncated JPEG": lambda: post(client, trained_run.name,
                                       [("images", ("cut.jpg", _truncated_jpeg(sample_photos["china"]), "image/jpeg"))]),
        "20000x20000 PNG": lambda: post(client, trained_run.name, [("images", ("bomb.png", bomb, "image/png"))]),
        "over the upload limit": lambda: post(client, trained_run.name,
                                              [("images", ("big.jpg", os.urandom(3 * 1024 * 1024), "image/jpeg"))]),
        "chunked over the limit": lambda: client.post(model, content=iter([b"x" * 65536] * 48),
                                                      headers={"Content-Type": "multipart/form-data; boundary=x"}),
        "missing token": lambda: httpx.post(f"{server.url}{model}", files=good_file, timeout=60),
        "wrong token": lambda: httpx.post(f"{server.url}{model}", files=good_file, timeout=60,
                                          headers={"Authorization": "Bearer nope"}),
        "token on health": lambda: httpx.get(f"{server.url}/api/health", timeout=60),
        "../ in model name": lambda: client.post(f"/api/models/..%2F..%2Fetc%2Fpasswd/predict", files=good_file),
        "../ raw": lambda: client.post("/api/models/%2E%2E/predict", files=good_file),
        "unknown model": lambda: post(client, "nope", good_file),
        "../ in run name": lambda: client.get("/api/runs/..%2F..%2Fetc"),
        "../ in image id": lambda: client.get(f"/api/runs/{trained_run.name}/images/..%2Fmodel.json"),
        "image id out of range": lambda: client.get(f"/api/runs/{trained_run.name}/images/99999"),
        "../ in static file": lambda: client.get("/static/..%2F..%2Fapp.py"),
        "top out of range": lambda: post(client, trained_run.name, good_file, top=0),
        "registry model has no run view": lambda: client.get("/api/runs/efficientnet_lite0"),
    }
    for what, request in cases.items():
        r = request()
        assert 400 <= r.status_code < 500, (what, r.status_code, r.text)
        message = r.json()["error"]
        assert message and "\n" not in message, (what, message)
        after = post(client, trained_run.name, good_file)
        assert after.status_code == 200 and after.json()[0]["status"] == "ok", (what, after.text)
    assert post(client, trained_run.name, [("images", ("t.jpg", b"text" * 10, "image/jpeg"))]).status_code == 415
    assert post(client, trained_run.name, [("images", ("bomb.png", bomb, "image/png"))]).status_code == 413
    assert httpx.post(f"{server.url}{model}", files=good_file).headers["WWW-Authenticate"] == "Bearer"
    # one bad image among good ones: the good ones are answered, the bad one says why (like predict --json)
    mixed = post(client, trained_run.name, good_file + [("images", ("t.jpg", b"text" * 10, "image/jpeg"))])
    assert mixed.status_code == 200
    assert [r["status"] == "ok" for r in mixed.json()] == [True, False]


def _digit_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(32 * 32).reshape(32, 32) % 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_content_is_sniffed_not_trusted(client, trained_run, sample_photos):
    jpeg = sample_photos["flower"].read_bytes()
    r = post(client, trained_run.name, [("images", ("looks_like.png", jpeg, "application/octet-stream"))])
    assert r.status_code == 200 and r.json()[0]["status"] == "ok"


def test_run_view_names_images_by_id(client, trained_run):
    data = client.get(f"/api/runs/{trained_run.name}").json()
    ev = data["evaluation"]
    # the validation split written by train, or a later `transferlab evaluate` on the shared run
    assert data["kind"] == "classifier" and ev["split"] in ("val", "evaluate") and len(ev["confusion"]) == 4
    assert sum(map(sum, ev["confusion"])) == ev["images"]
    assert data["history"] and "val_loss" in data["history"][0]
    ids = [it["id"] for row in ev["cells"] for cell in row for it in cell]
    assert ids and "path" not in json.dumps(ev["cells"])
    image = client.get(f"/api/runs/{trained_run.name}/images/{ids[0]}")
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(image.content)).size[0] <= 128


def test_report_html_is_self_contained(trained_run):
    html = (trained_run / "report.html").read_text()
    assert "window.TRANSFERLAB_RUN" in html and "data:image/jpeg;base64," in html
    assert 'src="static/' not in html and 'href="static/' not in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html


def test_the_docs_page_works_offline(server):
    """/docs loads Swagger UI from this server, not from a CDN: every URL it names is on this host and
    answers; the CDN-only ReDoc page is not served."""
    import re

    html = httpx.get(f"{server.url}/docs").text
    assert "http://" not in html and "https://" not in html
    urls = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
    assert {"/static/swagger-ui-bundle.js", "/static/swagger-ui.css", "/openapi.json"} <= set(urls)
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        assert httpx.get(server.url + url).status_code == 200, url
    assert httpx.get(f"{server.url}/redoc").status_code == 404


def test_the_page_files_are_package_data():
    """Every file the page and report.html read is matched by pyproject's package-data globs, so a wheel
    ships it."""
    import fnmatch
    import tomllib

    import transferlab

    root = Path(transferlab.__file__).parent
    pyproject = tomllib.loads((root.parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["transferlab"]
    files = [p.relative_to(root).as_posix() for p in (root / "runs" / "static").iterdir()]
    assert {"index.html", "app.js", "style.css"} <= {Path(f).name for f in files}
    assert [f for f in files if not any(fnmatch.fnmatch(f, g) for g in globs)] == []


def test_the_cli_warns_on_an_open_host_without_token(monkeypatch, capsys, trained_run):
    import uvicorn

    from transferlab.cli.main import main

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    monkeypatch.delenv("TRANSFERLAB_TOKEN", raising=False)
    assert main(["serve", str(trained_run), "--host", "0.0.0.0", "--port", "9"]) == 0
    err = capsys.readouterr().err
    assert "warning: serving on 0.0.0.0 without --token" in err
    assert main(["serve", str(trained_run), "--port", "9"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_run_is_served_on_its_int8_export_when_asked(trained_run, digits_folder, tmp_path):
    """--backend onnxruntime-int8: the server runs the run's int8 export (issue 17), same record shape."""
    import shutil

    from transferlab.api import export
    from transferlab.serve import create_app

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    export(str(run), quantize="int8", speed_seconds=0.05)
    image = sorted((digits_folder / "digit_1").glob("*.png"))[0]
    app = create_app([run], backend="onnxruntime-int8", max_wait_ms=1)
    served = next(iter(app.state.models.values()))
    assert type(served.engine()).__name__ == "QuantizedForward"
    with LiveServer(app) as live:
        with open(image, "rb") as f:
            response = httpx.post(f"{live.url}/api/models/run/predict", files=[("images", ("a.png", f.read(), "image/png"))])
    assert response.status_code == 200
    (record,) = response.json()
    assert record["status"] == "ok" and record["top"][0]["label"].startswith("digit_")
