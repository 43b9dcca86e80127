"""Soak: `transferlab serve` under steady load with bad requests mixed in, and its overhead over in-process predict.

    python bench/soak.py [--requests 20000] [--concurrency 64] [--bad 0.1] [--max-seconds 3600] [--json FILE]
    python bench/soak.py --images DIR --concurrency 8 --bad 0     # bench/predict.py's images (--keep DIR)

Starts `transferlab serve MODEL` in a subprocess on a free loopback port, then sends --requests
one-image requests of the --images (default: 8 photos at 640x480) over --concurrency keep-alive
connections (a minimal asyncio client sending prebuilt bytes, so that the load generator takes little
CPU); a --bad share of them are hostile
(text sent as a JPEG, a truncated JPEG, an empty file, a decompression-bomb header, an unknown
model, a body that is not multipart, top=0), spread evenly. It reports throughput, p50/p99 latency,
the answers by status (every bad request must get its 4xx, no request a 5xx), and the server's RSS
after a warm-up at the same concurrency and at the end.

The server's overhead (HTTP, multipart, the event loop, the client on the same cores) is its good-image
throughput as a share of in-process work on the same images and the same ONNX Runtime engine, with the
server idle, in two forms: `transferlab predict` (Classifier.predict on the image files, its own
batch size and decode workers) and the server's own pipeline without HTTP (ServedModel decode and batch
forward, batches of --max-batch, one after the other). The requests go in --rounds parts, each followed
by both in-process measurements, so that other jobs on a shared machine weigh on all three alike. The
whole run stops after --max-seconds.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import Server, photos_640x480, read_response, rss_mib  # noqa: E402  (bench/serve.py)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}

BOUNDARY = "soakboundary51c"


def multipart(files: list[tuple[str, bytes]]) -> bytes:
    body = b""
    for name, data in files:
        body += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{name}\"\r\n"
                 f"Content-Type: image/jpeg\r\n\r\n").encode() + data + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def http_request(model: str, body: bytes, content_type: str | None = None, query: str = "") -> bytes:
    content_type = content_type or f"multipart/form-data; boundary={BOUNDARY}"
    return (f"POST /api/models/{model}/predict{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def bomb_png(w: int = 60000, h: int = 60000) -> bytes:
    """A PNG header claiming w x h pixels, with a few bytes of data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def bad_requests(model: str, photo: bytes) -> dict[str, tuple[bytes, int]]:
    """name -> (request bytes, the 4xx it must get)."""
    return {
        "text as JPEG": (http_request(model, multipart([("t.jpg", b"not an image " * 40)])), 415),
        "truncated JPEG": (http_request(model, multipart([("cut.jpg", photo[: len(photo) // 3])])), 400),
        "empty file": (http_request(model, multipart([("e.jpg", b"")])), 400),
        "bomb header": (http_request(model, multipart([("bomb.png", bomb_png())])), 413),
        "unknown model": (http_request("no-such-model", multipart([("a.jpg", photo)])), 404),
        "not multipart": (http_request(model, b"hello", "text/plain"), 415),
        "top=0": (http_request(model, multipart([("a.jpg", photo)]), query="?top=0"), 422),
    }


async def _exchange(reader, writer, payload: bytes) -> tuple[int, bool, bytes]:
    """Send one request; (status, the server closes the connection, body)."""
    writer.write(payload)
    await writer.drain()
    status, headers, body = await read_response(reader)
    return status, headers.get("connection", "").lower() == "close", body


async def soak(port: int, plan: list[tuple[str, bytes, int]], concurrency: int, deadline: float) -> dict:
    """Send every (kind, request, expected status) of `plan` over `concurrency` connections."""
    latencies = {"good": [], "bad": []}
    statuses: Counter = Counter()
    wrong: Counter = Counter()  # kind -> answers other than the expected status
    not_ok_records = 0
    sent = 0
    jobs = iter(plan)

    async def client():
        nonlocal sent, not_ok_records
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for kind, payload, expected in jobs:
                if time.monotonic() > deadline:
                    break
                t = time.perf_counter()
                try:
                    status, close, body = await _exchange(reader, writer, payload)
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                    status, close, body = 0, True, b""  # 0: no answer (connection lost)
                latencies["good" if kind == "good" else "bad"].append(time.perf_counter() - t)
                sent += 1
                statuses[status] += 1
                if status != expected:
                    wrong[kind] += 1
                elif kind == "good" and b'"status":"ok"' not in body:
                    not_ok_records += 1
                if close:
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    good = np.asarray(latencies["good"] or [np.nan]) * 1000
    every = np.asarray(latencies["good"] + latencies["bad"] or [np.nan]) * 1000
    good_ok = sum(1 for k, _, e in plan[:sent] if k == "good") - wrong.get("good", 0)
    return {"sent": sent, "elapsed_s": elapsed, "req_per_s": sent / elapsed, "good_images_per_s": good_ok / elapsed,
            "p50_ms": float(np.percentile(every, 50)), "p99_ms": float(np.percentile(every, 99)),
            "good_p50_ms": float(np.percentile(good, 50)), "good_p99_ms": float(np.percentile(good, 99)),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "_good_ms": good, "_every_ms": every,
            "4xx": sum(v for k, v in statuses.items() if 400 <= k < 500),
            "5xx": sum(v for k, v in statuses.items() if k >= 500), "no_answer": statuses.get(0, 0),
            "unexpected": dict(wrong), "good_not_ok": not_ok_records}


class InProcess:
    """The same model loaded in this process as the server loads it (a ServedModel: the same engine,
    decode and batch forward), measured on the same images in two forms; each call adds to its totals."""

    def __init__(self, model: str, images: list[bytes], paths: list[Path], max_batch: int):
        from transferlab.serve.app import DEFAULT_MAX_PIXELS
        from transferlab.serve.models import load_models

        (self.m,) = load_models([model], backend="onnxruntime")
        self.m.warm_up()
        self.images, self.paths, self.max_batch, self.max_pixels = images, paths, max_batch, DEFAULT_MAX_PIXELS
        self.totals = {"pipeline": [0, 0.0], "predict": [0, 0.0]}  # form -> [images, seconds]
        self.pipeline(2 * max_batch)  # the engine's first calls at this batch size
        self.predict(len(paths))
        self.totals = {"pipeline": [0, 0.0], "predict": [0, 0.0]}

    def pipeline(self, count: int) -> None:
        """`count` images through decode and forward in batches of max_batch, as the server's threads do."""
        start, done = time.perf_counter(), 0
        while done < count:
            n = min(self.max_batch, count - done)
            items = [self.m.decode(self.images[(done + j) % len(self.images)], "x.jpg", self.max_pixels, 5, None)
                     for j in range(n)]
            assert all(r["status"] == "ok" for r in self.m.forward(items))
            done += n
        self._add("pipeline", done, time.perf_counter() - start)

    def predict(self, count: int) -> None:
        """`count` image files (at most all of them) through `transferlab predict` (Classifier.predict) on
        ONNX Runtime."""
        start = time.perf_counter()
        records = self.m.net.predict(self.paths[:count], top=5, progress=False, backend="onnxruntime")
        assert all(r["status"] == "ok" for r in records), [r for r in records if r["status"] != "ok"][:2]
        self._add("predict", len(records), time.perf_counter() - start)

    def _add(self, form: str, images: int, seconds: float) -> None:
        self.totals[form][0] += images
        self.totals[form][1] += seconds

    def rates(self) -> dict[str, float]:
        return {form: n / t for form, (n, t) in self.totals.items() if t}


def read_images(folder: Path, limit: int) -> list[Path]:
    """The image files under `folder` (sorted, at most `limit`)."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise SystemExit(f"--images {folder}: no JPEG, PNG, WebP or BMP file in it")
    return paths


def wait_ready(server: Server, timeout: float = 300) -> None:
    """Wait for /api/health/ready (the model warmed up in the server)."""
    import httpx

    deadline = time.time() + timeout
    while httpx.get(f"{server.url}/api/health/ready", timeout=10).status_code != 200:
        if time.time() > deadline:
            raise SystemExit("the server's model did not become ready")
        time.sleep(0.2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--images", type=Path, help="a folder of images to send (default: 8 photos at 640x480)")
    p.add_argument("--max-images", type=int, default=200, help="at most this many of --images")
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--bad", type=float, default=0.1, help="share of hostile requests, spread evenly")
    p.add_argument("--warm-up", type=int, default=400, help="good requests before the RSS baseline (not counted)")
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=10, help="parts of the requests, each followed by in-process runs")
    p.add_argument("--in-process", type=int, default=2000,
                   help="images for each in-process form, over all rounds (0: skip)")
    p.add_argument("--max-seconds", type=float, default=3600, help="stop sending after this long, whatever is left")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    deadline = t0 + args.max_seconds
    with tempfile.TemporaryDirectory() as tmp:
        if args.images:
            paths = read_images(args.images, args.max_images)
        else:  # the photos as --max-images files, for `transferlab predict` (which reads a path once)
            photos = photos_640x480()
            paths = [Path(tmp) / f"p{i}.jpg" for i in range(args.max_images)]
            for i, path in enumerate(paths):
                path.write_bytes(photos[i % len(photos)])
        images = [path.read_bytes() for path in paths]
        results = run(args, images, paths, deadline)
    print_results(args, results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def run(args, images: list[bytes], paths: list[Path], deadline: float) -> dict:
    results = {"machine": {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg()},
               "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "json"},
               "images": {"count": len(images), "mean_kib": sum(map(len, images)) / len(images) / 1024}}
    local = InProcess(args.model, images, paths, args.max_batch) if args.in_process else None
    server = Server(args.model, args.max_batch, 0.0)
    name = Path(args.model).name if Path(args.model).is_dir() else args.model  # a run folder is served by its name
    try:
        server.wait()
        wait_ready(server)
        good = [http_request(name, multipart([(f"p{i}.jpg", im)])) for i, im in enumerate(images)]
        bad = bad_requests(name, next((im for im in images if im[:2] == b"\xff\xd8"), images[0]))
        # the warm-up at the soak's concurrency: the RSS baseline then holds as many requests in flight
        warm = [("good", good[i % len(good)], 200) for i in range(args.warm_up)]
        warm += [(k, r, s) for k, (r, s) in bad.items()]
        asyncio.run(soak(server.port, warm, args.concurrency, deadline))
        rss = {"after_warm_up_mib": rss_mib(server.proc.pid)}
        every = max(1, round(1 / args.bad)) if args.bad > 0 else 0
        kinds = list(bad)
        plan = []
        for i in range(args.requests):
            if every and i % every == every - 1:
                kind = kinds[(i // every) % len(kinds)]
                plan.append((kind, *bad[kind]))
            else:
                plan.append(("good", good[i % len(good)], 200))
        parts = []
        for r in range(args.rounds):
            part = plan[r * len(plan) // args.rounds:(r + 1) * len(plan) // args.rounds]
            if time.monotonic() > deadline or not part:
                break
            parts.append(asyncio.run(soak(server.port, part, args.concurrency, deadline)))
            shares = ""
            if local is not None:  # the server idle meanwhile
                local.pipeline(-(-args.in_process // args.rounds))
                local.predict(-(-args.in_process // args.rounds))
                shares = ", ".join(f"{form} {rate:.1f}" for form, rate in local.rates().items())
            done = sum(x["sent"] for x in parts)
            print(f"  round {r + 1}: {done} requests, {parts[-1]['good_images_per_s']:.1f} good images/s, "
                  f"RSS {rss_mib(server.proc.pid):.0f} MiB, in-process so far (images/s): {shares or '-'}, "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
        measured = merge(parts)
        rss["end_mib"] = rss_mib(server.proc.pid)
        rss["growth_mib"] = rss["end_mib"] - rss["after_warm_up_mib"]
        results["soak"] = {**measured, "bad_sent": sum(1 for k, _, _ in plan[:measured["sent"]] if k != "good"),
                           "rss": rss, "loadavg_after": os.getloadavg()}
        if measured["5xx"] or measured["no_answer"] or measured["unexpected"]:
            print(f"warning: {measured['5xx']} 5xx, {measured['no_answer']} unanswered, unexpected answers "
                  f"{measured['unexpected']}", file=sys.stderr)
    finally:
        server.stop()
    if local is not None:
        rates = local.rates()
        results["in_process"] = {"images_per_s": rates, "images": {k: n for k, (n, _) in local.totals.items()},
                                 "max_batch": args.max_batch, "torch_threads": local.m.threads}
        results["server_share_of_in_process"] = {k: results["soak"]["good_images_per_s"] / v for k, v in rates.items()}
    results["machine"]["loadavg_after"] = os.getloadavg()
    return results


def merge(parts: list[dict]) -> dict:
    """The rounds' results as one run: counts added, rates over the summed time, latencies pooled."""
    elapsed = sum(x["elapsed_s"] for x in parts)
    latencies = {k: np.concatenate([x.pop(f"_{k}_ms") for x in parts]) for k in ("good", "every")}
    statuses: Counter = sum((Counter(x["statuses"]) for x in parts), Counter())
    unexpected: Counter = sum((Counter(x["unexpected"]) for x in parts), Counter())
    good_ok = sum(x["good_images_per_s"] * x["elapsed_s"] for x in parts)
    return {"sent": sum(x["sent"] for x in parts), "elapsed_s": elapsed,
            "req_per_s": sum(x["sent"] for x in parts) / elapsed, "good_images_per_s": good_ok / elapsed,
            "p50_ms": float(np.percentile(latencies["every"], 50)), "p99_ms": float(np.percentile(latencies["every"], 99)),
            "good_p50_ms": float(np.percentile(latencies["good"], 50)),
            "good_p99_ms": float(np.percentile(latencies["good"], 99)),
            "statuses": dict(sorted(statuses.items())),
            "4xx": sum(v for k, v in statuses.items() if 400 <= int(k) < 500),
            "5xx": sum(v for k, v in statuses.items() if int(k) >= 500), "no_answer": statuses.get("0", 0),
            "unexpected": dict(unexpected), "good_not_ok": sum(x["good_not_ok"] for x in parts),
            "rounds": [{k: x[k] for k in ("sent", "elapsed_s", "good_images_per_s")} for x in parts]}


def print_results(args, results: dict) -> None:
    s = results["soak"]
    print("\n| requests | bad | concurrency | requests/s | good images/s | p50 ms | p99 ms | 4xx | 5xx | "
          "no answer | RSS growth MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {s['sent']} | {s['bad_sent']} | {args.concurrency} | {s['req_per_s']:.1f} | {s['good_images_per_s']:.1f} | "
          f"{s['p50_ms']:.0f} | {s['p99_ms']:.0f} | {s['4xx']} | {s['5xx']} | {s['no_answer']} | "
          f"{s['rss']['growth_mib']:+.1f} ({s['rss']['after_warm_up_mib']:.0f} -> {s['rss']['end_mib']:.0f}) |")
    print(f"good requests: p50 {s['good_p50_ms']:.0f} ms, p99 {s['good_p99_ms']:.0f} ms; statuses {s['statuses']}; "
          f"bad requests answered otherwise than expected: {s['unexpected'] or 'none'}")
    if "in_process" in results:
        ip, share = results["in_process"], results["server_share_of_in_process"]
        print(f"in-process on the same engine and images, interleaved with the {len(s['rounds'])} rounds: "
              f"transferlab predict {ip['images_per_s']['predict']:.1f} images/s (the server gives "
              f"{share['predict']:.0%} of it), the server's pipeline without HTTP at batches of {ip['max_batch']} "
              f"{ip['images_per_s']['pipeline']:.1f} images/s ({share['pipeline']:.0%})")
    print(f"load average (1, 5, 15 min): before {results['machine']['loadavg_before']}, "
          f"after {results['machine']['loadavg_after']}")
    print(json.dumps({k: results[k] for k in ("soak", "in_process", "server_share_of_in_process") if k in results}))


if __name__ == "__main__":
    sys.exit(main())
