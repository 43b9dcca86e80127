"""Soak: `transferlab serve` under steady load with bad requests mixed in, and its overhead over in-process predict.

    python bench/soak.py [--requests 20000] [--concurrency 64] [--bad 0.1] [--max-seconds 3600] [--json FILE]

Starts `transferlab serve MODEL` in a subprocess on a free loopback port, then sends --requests
one-image requests over --concurrency keep-alive connections (a minimal asyncio client sending
prebuilt bytes, so that the load generator takes little CPU); a --bad share of them are hostile
(text sent as a JPEG, a truncated JPEG, an empty file, a decompression-bomb header, an unknown
model, a body that is not multipart, top=0), spread evenly. It reports throughput, p50/p99 latency,
the answers by status (every bad request must get its 4xx, no request a 5xx), and the server's RSS
after warm-up and at the end.

Then, with the server idle, the same model is loaded in this process as the server loads it (the same
ONNX Runtime engine, the same decode and batch forward, batches of --max-batch) and runs the same
images: the server's good-image throughput as a share of that is its overhead (HTTP, multipart,
the event loop, the client on the same cores). The whole run stops after --max-seconds.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import Server, photos_640x480, read_response, rss_mib  # noqa: E402  (bench/serve.py)

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


async def soak(port: int, plan: list[tuple[str, bytes, int]], concurrency: int, deadline: float,
               on_progress=None) -> dict:
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
                if on_progress and sent % 1000 == 0:
                    on_progress(sent)
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
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "4xx": sum(v for k, v in statuses.items() if 400 <= k < 500),
            "5xx": sum(v for k, v in statuses.items() if k >= 500), "no_answer": statuses.get(0, 0),
            "unexpected": dict(wrong), "good_not_ok": not_ok_records}


def in_process(model: str, images: list[bytes], count: int, max_batch: int, seconds: float) -> dict:
    """The server's pipeline without HTTP: the same ServedModel (engine, decode, batch forward) on the
    same images, `count` images (or as many as fit in `seconds`) in batches of max_batch."""
    from transferlab.serve.app import DEFAULT_MAX_PIXELS
    from transferlab.serve.models import load_models

    (m,) = load_models([model])
    m.warm_up()
    for i in range(2 * max_batch):  # the engine's first calls at this batch size
        m.forward([m.decode(images[i % len(images)], "w.jpg", DEFAULT_MAX_PIXELS, 5, None)])
    done, start = 0, time.perf_counter()
    while done < count and time.perf_counter() - start < seconds:
        n = min(max_batch, count - done)
        items = [m.decode(images[(done + j) % len(images)], "x.jpg", DEFAULT_MAX_PIXELS, 5, None) for j in range(n)]
        records = m.forward(items)
        assert all(r["status"] == "ok" for r in records)
        done += n
    elapsed = time.perf_counter() - start
    return {"images": done, "elapsed_s": elapsed, "images_per_s": done / elapsed, "max_batch": max_batch,
            "torch_threads": m.threads}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--bad", type=float, default=0.1, help="share of hostile requests, spread evenly")
    p.add_argument("--warm-up", type=int, default=200, help="good requests before the RSS baseline (not counted)")
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--in-process", type=int, default=400, help="images for the in-process measurement (0: skip)")
    p.add_argument("--max-seconds", type=float, default=3600, help="stop sending after this long, whatever is left")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    deadline = t0 + args.max_seconds
    images = photos_640x480()
    results = {"machine": {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg()},
               "args": {k: v for k, v in vars(args).items() if k != "json"}}
    server = Server(args.model, args.max_batch, 0.0)
    try:
        server.wait()
        good = [http_request(args.model, multipart([(f"p{i}.jpg", im)])) for i, im in enumerate(images)]
        bad = bad_requests(args.model, images[0])
        warm = [("good", good[i % len(good)], 200) for i in range(args.warm_up)]
        warm += [(k, r, s) for k, (r, s) in bad.items()]
        asyncio.run(soak(server.port, warm, min(args.concurrency, 16), deadline))
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
        progress = (lambda n: print(f"  {n} requests, RSS {rss_mib(server.proc.pid):.0f} MiB", flush=True))
        measured = asyncio.run(soak(server.port, plan, args.concurrency, deadline, progress))
        rss["end_mib"] = rss_mib(server.proc.pid)
        rss["growth_mib"] = rss["end_mib"] - rss["after_warm_up_mib"]
        results["soak"] = {**measured, "bad_sent": sum(1 for k, _, _ in plan[:measured["sent"]] if k != "good"),
                           "rss": rss, "loadavg_after": os.getloadavg()}
        if measured["5xx"] or measured["no_answer"] or measured["unexpected"]:
            print(f"warning: {measured['5xx']} 5xx, {measured['no_answer']} unanswered, unexpected answers "
                  f"{measured['unexpected']}", file=sys.stderr)
    finally:
        server.stop()
    if args.in_process:
        results["in_process"] = in_process(args.model, images, args.in_process, args.max_batch,
                                           max(5.0, deadline - time.monotonic()))
        results["server_share_of_in_process"] = (results["soak"]["good_images_per_s"]
                                                 / results["in_process"]["images_per_s"])
    results["machine"]["loadavg_after"] = os.getloadavg()
    s = results["soak"]
    print(f"\n| requests | bad | concurrency | requests/s | good images/s | p50 ms | p99 ms | 4xx | 5xx | "
          f"no answer | RSS growth MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {s['sent']} | {s['bad_sent']} | {args.concurrency} | {s['req_per_s']:.1f} | {s['good_images_per_s']:.1f} | "
          f"{s['p50_ms']:.0f} | {s['p99_ms']:.0f} | {s['4xx']} | {s['5xx']} | {s['no_answer']} | "
          f"{s['rss']['growth_mib']:+.1f} ({s['rss']['after_warm_up_mib']:.0f} -> {s['rss']['end_mib']:.0f}) |")
    print(f"good requests: p50 {s['good_p50_ms']:.0f} ms, p99 {s['good_p99_ms']:.0f} ms; statuses {s['statuses']}; "
          f"bad requests answered otherwise than expected: {s['unexpected'] or 'none'}")
    if "in_process" in results:
        ip = results["in_process"]
        print(f"in-process predict, same engine and images, batches of {ip['max_batch']}: "
              f"{ip['images_per_s']:.1f} images/s; the server gives {results['server_share_of_in_process']:.0%} of it")
    print(f"load average (1, 5, 15 min): before {results['machine']['loadavg_before']}, "
          f"after {results['machine']['loadavg_after']}")
    print(json.dumps({k: results[k] for k in ("soak", "in_process", "server_share_of_in_process") if k in results}))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
