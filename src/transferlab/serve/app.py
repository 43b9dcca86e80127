"""The HTTP API and the page: FastAPI (OpenAPI schema at /openapi.json, docs at /docs) under uvicorn.

GET /api/health (the process, each model's state and queue), GET /api/health/live and
GET /api/health/ready (probes: the process answers; every model is loaded), GET /metrics (Prometheus),
GET /api/models, POST /api/models/{name}/predict (multipart, one or many images;
explain=true adds each image's class-activation heatmap as a PNG data URI),
GET /api/runs/{name} (the Run view's data), GET /api/runs/{name}/images/{id} (an image of the run's own
index, by id), with --runs DIR: GET /api/runs (every run under DIR, `transferlab runs`'s rows) and
GET /api/runs/{name}/history (its metrics.csv), and the page at /.
Safe by default: every /api call but the two probes, and /metrics, need the bearer token when one is
set, uploads are limited in bytes and pixels and sniffed by content, no route reads a client-named path,
CORS is off unless origins are given; a bad request gets a 4xx {"error": "one line"}.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

import fastapi_offline
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from .. import __version__
from ..core.errors import TransferlabError
from ..runs.html import static_text
from ..runs.table import list_runs
from ..runs.view import read_history, run_view, thumbnail_jpeg
from .batching import DynamicBatcher, QueueFull
from .metrics import Instrument, Metrics
from .models import ServedModel, UploadError, load_models
from .openapi import complete_schema

DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_IMAGES = 32
JS, CSS = "text/javascript; charset=utf-8", "text/css; charset=utf-8"
# what /static/{file} serves, from a fixed index (never a path from the client): the page's files, and
# Swagger UI 5's for /docs (FastAPI's default page loads them from a CDN; the server must work offline),
# shipped in the fastapi-offline package
PAGE_FILES = {"app.js": JS, "runs.js": JS, "style.css": CSS}
DOCS_FILES = {"swagger-ui-bundle.js": JS, "swagger-ui.css": CSS, "favicon.png": "image/png"}
RETRY_AFTER_S = 1
# the probes answer without the token: a kubelet's httpGet probe cannot send a secret
PROBES = ("/api/health/live", "/api/health/ready")
log = logging.getLogger("transferlab.serve")


class ApiError(HTTPException):
    """A 4xx/5xx answer with a one-line message (and headers such as Retry-After)."""


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is refused with 413, by its Content-Length
    before reading, or while it streams (chunked uploads) before it is all in memory."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        """Check the declared length, then count the bytes as they arrive."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _json(send, 413, f"upload of {int(declared)} bytes is over the limit of {self.max_bytes}")
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise ApiError(413, f"upload is over the limit of {self.max_bytes} bytes")
            return message

        return await self.app(scope, counted, send)


async def _json(send, status: int, message: str) -> None:
    body = JSONResponse({"error": message}, status_code=status).body
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def create_app(models, *, token: str | None = None, max_batch: int = 4, max_wait_ms: float = 0.0,
               max_queue: int = 256, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_images: int = DEFAULT_MAX_IMAGES,
               cors_origins=(), decode_threads: int = 2, backend: str = "auto",
               max_drop: float | None = None, runs_dir=None, tta: bool | None = None) -> FastAPI:
    """The app serving `models` (registry names, run folders of either kind, or loaded models).

    max_batch / max_wait_ms: dynamic batching (max_batch 1 turns it off). On 2 CPU cores ONNX Runtime
    runs lite0 cheapest per image at batches of 2-4; from 8 on, a batch's activations outgrow the 2 MiB
    L2 cache and each image costs more than alone. With max_wait_ms 0, Triton's default, a batch is what
    queued while the model was busy: waiting longer only adds latency when the cost per image barely
    falls with the batch size.
    max_queue: images waiting per model before the server answers 503; max_upload_mb, max_pixels,
    max_images: per request.
    backend / max_drop: a classifier run's engine, as `predict --backend` (onnxruntime-int8 needs
    `transferlab export RUN --quantize int8`; auto uses it when its recorded drop is <= max_drop).
    runs_dir: a folder of runs for the page's Runs tab (the runs are read, never loaded as models).
    tta: the classifiers' test-time augmentation on or off (default: each run's); /api/models says which.

    The models' weights load here; each model's warm-up (a classifier's ONNX export, seconds) runs once
    the server is up, in its inference thread: /api/health/ready answers 503 until every model is warm,
    and a prediction sent meanwhile waits for it.
    """
    served: dict[str, ServedModel] = {m.name: m for m in load_models(models, backend, max_drop, tta)}
    state = {name: "loading" for name in served}  # then "ready", or "failed to load (why)"
    batchers: dict[str, DynamicBatcher] = {}  # filled below: each batcher reports to the metrics
    metrics = Metrics(state, batchers, max_batch)
    batchers.update({name: DynamicBatcher(m.forward, max_batch, max_wait_ms, max_queue, name, metrics.on_batch(name))
                     for name, m in served.items()})
    decoder = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode")
    views: dict[str, tuple[dict, list[str]]] = {}
    index = static_text("index.html")
    assets = {**{n: (static_text(n), t) for n, t in PAGE_FILES.items()},
              **{n: (files(fastapi_offline).joinpath("static", n).read_bytes(), t) for n, t in DOCS_FILES.items()}}

    async def warm_up() -> None:
        for name, m in served.items():  # one at a time: torch's ONNX export keeps global state
            try:
                await batchers[name].run_exclusive(m.warm_up)
            except Exception as e:  # noqa: BLE001  (the model stays unready and says why; the others serve)
                state[name] = f"failed to load ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})"
                log.error("transferlab: model %s %s", name, state[name])
            else:
                state[name] = "ready"

    @asynccontextmanager
    async def lifespan(app):
        for b in batchers.values():
            b.start()
        loading = asyncio.create_task(warm_up())
        yield
        loading.cancel()
        for b in batchers.values():
            await b.stop()
        decoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="transferlab", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Pretrained and fine-tuned vision models: labels (classifiers) and faces (detectors).")
    app.state.models, app.state.batchers, app.state.model_state = served, batchers, state
    app.openapi = lambda: complete_schema(app, token is not None, max_images, PROBES)  # every answer, as sent

    # async: FastAPI runs a sync dependency in a worker thread, a thread hop on every request
    async def authorized(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(401, "missing or wrong token: send Authorization: Bearer TOKEN",
                           headers={"WWW-Authenticate": "Bearer"})

    def model(name: str) -> ServedModel:
        if name not in served:
            raise ApiError(404, f"no model named {name[:80]!r}; GET /api/models lists them")
        return served[name]

    api = [Depends(authorized)]

    @app.get("/api/health", dependencies=api)
    async def health() -> dict:
        """The process answers (status "ok", as before the probes existed), whether every model is ready,
        each model's state ("loading", "ready", "failed to load (why)") and queue, and whether a runs
        folder is served (--runs)."""
        return {"status": "ok", "version": __version__, "runs": runs_dir is not None, "ready": not_ready() == [],
                "models": {n: {"kind": m.kind, "state": state[n], "queued": batchers[n].queued,
                               "batches": batchers[n].batches, "images": batchers[n].items}
                           for n, m in served.items()}}

    def not_ready() -> list[str]:
        return [f"{n} is loading" if s == "loading" else f"{n} {s}" for n, s in state.items() if s != "ready"]

    @app.get(PROBES[0])
    async def live() -> dict:
        """Liveness probe (no token): the process and its event loop answer."""
        return {"status": "ok"}

    @app.get(PROBES[1])
    async def ready() -> dict:
        """Readiness probe (no token): 200 once every model is loaded and warmed up; 503 naming the ones
        that are not (still loading, or failed to load) until then."""
        waiting = not_ready()
        if waiting:
            raise ApiError(503, f"not ready: {'; '.join(waiting)}", headers={"Retry-After": str(RETRY_AFTER_S)})
        return {"status": "ready"}

    @app.get("/metrics", dependencies=api, response_class=Response)
    async def prometheus(request: Request) -> Response:
        """Prometheus metrics (text format, or OpenMetrics when the scraper asks for it)."""
        body, content_type = metrics.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    @app.get("/api/models", dependencies=api)
    async def list_models() -> list[dict]:
        """Every model served: name, kind, classes, preprocessing, metrics (model.json)."""
        return [m.describe() for m in served.values()]

    @app.post("/api/models/{name}/predict", dependencies=api)
    async def predict(name: str, request: Request, top: int = 5, threshold: float | None = None,
                      explain: bool = False, explain_class: str | None = None,
                      explain_method: str = "gradcam") -> list[dict]:
        """Labels (classifier) or faces (detector) for one or many images sent as multipart form files;
        one record per image, as `transferlab predict --json` prints them. A multi-label classifier's
        records also hold "labels" ({label, index, score}: every label at or above its threshold, the
        run's tuned ones or `threshold` for all); a detector keeps faces scoring `threshold` or more."""
        m = model(name)
        if state[name].startswith("failed"):
            raise ApiError(503, f"model {name} {state[name]}")
        if not 1 <= top <= 1000:
            raise ApiError(422, "top must be between 1 and 1000")
        if explain:  # explain=true: each record gains "heatmap", a PNG data URI (the page's heatmap toggle)
            _check_explain(m, explain_class, explain_method)
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ApiError(422, "threshold must be between 0 and 1")
        batcher = batchers[name]
        if batcher.free() < 1:
            raise ApiError(503, "busy: the queue is full, retry shortly", headers={"Retry-After": str(RETRY_AFTER_S)})
        if "multipart/form-data" not in request.headers.get("content-type", ""):
            raise ApiError(415, "send the images as multipart/form-data files (field name: images)")
        try:
            form = await request.form(max_files=max_images, max_fields=max_images)
        except HTTPException:
            raise
        except Exception as e:  # noqa: BLE001  (malformed multipart: the client's mistake)
            raise ApiError(400, f"malformed multipart body ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})")
        try:
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if not files:
                raise ApiError(400, "no image in the request: send one or more files (field name: images)")
            uploads = [(await f.read(), _display_name(f.filename, i)) for i, f in enumerate(files)]
        finally:
            await form.close()
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(*(loop.run_in_executor(decoder, _decode, m, data, fname, max_pixels, top, threshold)
                                         for data, fname in uploads))
        good = [d for d in decoded if not isinstance(d, UploadError)]
        if not good:
            raise ApiError(decoded[0].status, decoded[0].message if len(decoded) == 1
                           else f"no image could be read; first: {decoded[0].message}")
        try:
            done = await batcher.submit(good)
            if explain:
                await batcher.run_exclusive(m.explain, good, done, explain_class, explain_method)
            results = iter(done)
        except QueueFull:
            raise ApiError(503, "busy: the queue is full, retry shortly", headers={"Retry-After": str(RETRY_AFTER_S)})
        kind_key = "top" if m.kind == "classifier" else "detections"
        return [next(results) if not isinstance(d, UploadError)
                else {"path": fname, "status": d.message, kind_key: []} for d, (_, fname) in zip(decoded, uploads)]

    def view(name: str) -> tuple[dict, list[str]]:
        if name not in served and runs_dir is not None:
            path = listed_run(name)
            if name not in views:
                try:
                    views[name] = run_view(path)
                except TransferlabError as e:  # an interrupted run has curves but no Run view
                    raise ApiError(404, str(e))
            return views[name]
        m = model(name)
        if m.run is None:
            raise ApiError(404, f"{name} is a registry model, not a run folder: it has no Run view")
        if name not in views:
            views[name] = run_view(m.run)
        return views[name]

    # --runs DIR: the runs it holds, by a key from their name under DIR (a client names a listed run,
    # never a path; "/" of a nested run's name becomes ":" so that the key is one URL segment)
    listed: dict[str, Path] = {}

    def list_dir() -> list[dict]:
        rows = [{**r, "key": r["name"].replace("/", ":")} for r in list_runs(runs_dir, sort="created")]
        listed.clear()
        listed.update({r["key"]: Path(r["path"]) for r in rows})
        return rows

    def listed_run(name: str) -> Path:
        if name not in listed:
            list_dir()  # a run that appeared since the page listed them
        if name not in listed:
            raise ApiError(404, f"no run named {name[:80]!r} under the runs folder; GET /api/runs lists them")
        return listed[name]

    @app.get("/api/runs", dependencies=api)
    async def runs() -> list[dict]:
        """Every run under the --runs folder (finished, interrupted, or a folder that is none), as
        `transferlab runs --json` prints them, each with the `key` the other /api/runs routes take."""
        if runs_dir is None:
            raise ApiError(404, "no runs folder: start the server with --runs DIR")
        rows = await asyncio.get_running_loop().run_in_executor(decoder, list_dir)
        return [{k: v for k, v in r.items() if k != "path"} for r in rows]

    @app.get("/api/runs/{name}/history", dependencies=api)
    async def run_history(name: str) -> list[dict]:
        """metrics.csv of a run under the --runs folder (or of a served run), one row per epoch."""
        path = served[name].run if name in served and served[name].run is not None else None
        if path is None:
            if runs_dir is None:
                raise ApiError(404, f"no run named {name[:80]!r}")
            path = listed_run(name)
        return read_history(path)

    @app.get("/api/runs/{name}", dependencies=api)
    async def run(name: str) -> dict:
        """The Run view's data: model.json, metrics.csv, the evaluation with images named by id."""
        data, _ = await asyncio.get_running_loop().run_in_executor(decoder, view, name)
        return data

    @app.get("/api/runs/{name}/images/{image_id}", dependencies=api)
    async def run_image(name: str, image_id: int) -> Response:
        """A thumbnail (JPEG) of image `image_id` of the run's own index."""
        _, images = view(name)
        if not 0 <= image_id < len(images):
            raise ApiError(404, f"no image {image_id} in this run's index")
        jpeg = await asyncio.get_running_loop().run_in_executor(decoder, thumbnail_jpeg, images[image_id])
        if jpeg is None:
            raise ApiError(404, f"image {image_id} of this run can no longer be read")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(index)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:
        # validatorUrl None: Swagger UI would otherwise send the schema to validator.swagger.io
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} API",
                                   swagger_js_url="/static/swagger-ui-bundle.js",
                                   swagger_css_url="/static/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.png",
                                   swagger_ui_parameters={"validatorUrl": None})

    @app.get("/static/{file}", include_in_schema=False)
    async def static(file: str) -> Response:
        if file not in assets:
            raise ApiError(404, "not found")
        content, media_type = assets[file]
        return Response(content, media_type=media_type)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        return JSONResponse({"error": message.splitlines()[0] if message else "error"}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body"))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"[:200]}, status_code=422)

    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization"])
    app.add_middleware(BodyLimit, max_bytes=int(max_upload_mb * 1024 * 1024))
    app.add_middleware(Instrument, metrics=metrics, routes=app.router.routes)  # outermost: sees every answer
    return app


def _check_explain(m: ServedModel, class_name: str | None, method: str) -> None:
    """explain=true is for classifiers, with pytorch-grad-cam installed, a known method and class: else 4xx/501."""
    from ..core.errors import TransferlabError
    from ..inference.explain import cam_library, check_method, class_index

    if m.kind != "classifier":
        raise ApiError(422, "explain applies to classifiers: a face detector has no class-activation map")
    try:
        check_method(method)
        if class_name is not None:
            class_index(m.net.classes, class_name)
    except TransferlabError as e:
        raise ApiError(422, str(e).replace("--explain-class", "explain_class"))
    try:
        cam_library()
    except TransferlabError as e:
        raise ApiError(501, f"{e} (on the server)")


def _decode(m: ServedModel, data: bytes, filename: str, max_pixels: int, top: int, threshold):
    try:
        return m.decode(data, filename, max_pixels, top, threshold)
    except UploadError as e:
        return e


def _display_name(filename: str | None, i: int) -> str:
    """The name the record carries: the client's base name, used as a label only (never opened)."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:200] or f"image{i}"
