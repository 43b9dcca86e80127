"""The OpenAPI schema the server publishes, completed with what its routes really take and answer.

FastAPI documents each route's successful answer and its own validation error ({"detail": [...]}).
This server answers every refusal as {"error": "one line"} with a 4xx (or 503 when busy), reads the
images of /predict from a multipart body it parses itself, sends thumbnails as JPEG and /metrics as
Prometheus text, and checks a bearer token on every route but the two probes, so the schema says so: a client generated from it, or a fuzzer checking answers
against it (tests/test_fuzz_http.py), sees the server as it is.
"""
from __future__ import annotations

from fastapi import FastAPI

ERROR = {"type": "object", "required": ["error"], "additionalProperties": False,
         "properties": {"error": {"type": "string", "description": "what was wrong, in one line"}}}
RECORD = {"type": "object", "required": ["path", "status"], "additionalProperties": True,
          "properties": {"path": {"type": "string", "description": "the upload's base name (a label only)"},
                         "status": {"type": "string", "description": '"ok", or why the image could not be read'},
                         "top": {"type": "array", "items": {"type": "object"}},
                         "labels": {"type": "array", "items": {"type": "object"}},
                         "detections": {"type": "array", "items": {"type": "object"}}}}
PREDICT = "/api/models/{name}/predict"
IMAGE = "/api/runs/{name}/images/{image_id}"
READY = "/api/health/ready"
METRICS = "/metrics"


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def complete_schema(app: FastAPI, secured: bool, max_images: int, open_paths=()) -> dict:
    """app's OpenAPI schema (built once by FastAPI, then completed in place and cached); with `secured`,
    every /api route and /metrics need the token but `open_paths`."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = FastAPI.openapi(app)
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Error"] = ERROR
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's {"detail": ...}, never sent here
        schemas.pop(name, None)
    if secured:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                    "description": "the token given to `transferlab serve --token`"}}
    for path, methods in schema.get("paths", {}).items():
        for method, op in methods.items():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            responses["4XX"] = _error("a refused request: bad input, unknown model, missing token, too large, ...")
            if secured and (path.startswith("/api/") or path == METRICS) and path not in open_paths:
                op["security"] = [{"bearer": []}]
            for param in op.get("parameters", []):
                _bound(param)
            if path == PREDICT and method == "post":
                _predict(op, max_images)
            elif path == IMAGE:
                responses["200"] = {"description": "a JPEG thumbnail",
                                    "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}
            elif path == READY:
                responses["503"] = {**_error("not ready: which models are still loading or failed to load"),
                                    "headers": {"Retry-After": {"schema": {"type": "integer"}}}}
            elif path == METRICS:
                text = {"schema": {"type": "string"}}
                responses["200"] = {"description": "Prometheus text format, or OpenMetrics when the Accept header asks",
                                    "content": {"text/plain": text, "application/openmetrics-text": text}}
    return schema


def _bound(param: dict) -> None:
    """The limits /predict checks, as the schema's bounds."""
    bounds = {"top": (1, 1000), "threshold": (0.0, 1.0)}.get(param.get("name"))
    if bounds is None or param.get("in") != "query":
        return
    schema = param.get("schema", {})
    for s in schema.get("anyOf", [schema]):
        if s.get("type") in ("integer", "number"):
            s["minimum"], s["maximum"] = bounds


def _predict(op: dict, max_images: int) -> None:
    op["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["images"],
        "properties": {"images": {"type": "array", "minItems": 1, "maxItems": max_images,
                                  "items": {"type": "string", "format": "binary"},
                                  "description": "JPEG, PNG, GIF, WebP, BMP or TIFF files (sniffed by content)"}}}}}}
    op["responses"]["200"] = {"description": "one record per image, in the order sent",
                              "content": {"application/json": {"schema": {"type": "array", "items": RECORD}}}}
    op["responses"]["503"] = {**_error("busy: the model's queue is full; retry after Retry-After seconds"),
                              "headers": {"Retry-After": {"schema": {"type": "integer"}}}}
