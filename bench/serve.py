"""Benchmark: `transferlab serve` under load, with dynamic batching and with batching off (max batch 1).

    python bench/serve.py [--requests 300] [--rounds 2] [--rss-requests 10000] [--concurrency 1,8,32] [--json FILE]

Starts `transferlab serve efficientnet_lite0` twice in subprocesses on free loopback ports, with
dynamic batching and with max batch 1 (the same code path, batching off), warms both up, then sends
640x480 JPEGs (one image per request, from scikit-image and scikit-learn photos) from an asyncio
client (keep-alive connections, prebuilt requests) to each mode in turn at each concurrency, --rounds
times, and reports requests/s, p50/p99 latency, errors and the 1-minute load average. It then sends
--rss-requests more to the batching server and reports its RSS before and after. The client runs on
the same machine and takes its share of the CPU.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def photos_640x480(count: int = 8) -> list[bytes]:
    """JPEG bytes of real photos rescaled to 640x480."""
    from PIL import Image

    try:
        import skimage.data as sd
        from sklearn.datasets import load_sample_images

        arrays = [sd.astronaut(), sd.coffee(), sd.chelsea(), sd.rocket()] + list(load_sample_images().images)
    except ImportError:  # any image will do for timing
        rng = np.random.default_rng(0)
        arrays = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(4)]
    out = []
    for i in range(count):
        buf = io.BytesIO()
        Image.fromarray(np.asarray(arrays[i % len(arrays)])[..., :3]).resize((640, 480)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """`transferlab serve` in a subprocess."""

    def __init__(self, model: str, max_batch: int, max_wait_ms: float):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "OMP_WAIT_POLICY": "PASSIVE"}
        self.proc = subprocess.Popen([sys.executable, "-m", "transferlab", "serve", model, "--port", str(self.port),
                                      "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
                                      "--max-queue", "1024"], env=env)

    def wait(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit("server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def request_bytes(port: int, model: str, image: bytes) -> bytes:
    """One keep-alive HTTP/1.1 multipart request, built once and sent as is (like wrk's scripts)."""
    boundary = "benchboundary7d9"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"x.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /api/models/{model}/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def read_response(reader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: status, headers (lower-case names), body."""
    status = await reader.readline()
    if not status:
        raise ConnectionResetError("the server closed the connection")
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return int(status.split()[1]), headers, body


async def _one(reader, writer, payload: bytes) -> bool:
    writer.write(payload)
    await writer.drain()
    status, _, body = await read_response(reader)
    return status == 200 and b'"status":"ok"' in body


async def load(url: str, model: str, images: list[bytes], requests: int, concurrency: int) -> dict:
    """Send `requests` one-image requests over `concurrency` keep-alive connections; latency per request.
    A minimal client (prebuilt request bytes) so that the load generator takes little of the CPU."""
    port = int(url.rsplit(":", 1)[1])
    payloads = [request_bytes(port, model, im) for im in images]
    latencies, errors, counter = [], 0, iter(range(requests))

    async def client():
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in counter:
                t = time.perf_counter()
                try:
                    ok = await _one(reader, writer, payloads[i % len(payloads)])
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    ok = False
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                latencies.append(time.perf_counter() - t)
                errors += not ok
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    lat = np.asarray(latencies) * 1000
    return {"requests": requests, "concurrency": concurrency, "req_per_s": requests / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)), "errors": errors}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--requests", type=int, default=300, help="requests per mode, concurrency level and round")
    p.add_argument("--rounds", type=int, default=2, help="times every (mode, concurrency) is measured")
    p.add_argument("--warm-up", type=int, default=64, help="requests per mode before measuring")
    p.add_argument("--rss-requests", type=int, default=10_000, help="requests between the two RSS readings (0: skip)")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--max-wait-ms", type=float, default=0.0)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    top = max(levels)
    images = photos_640x480()
    results = {"machine": {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}, "rows": [], "rss": None}
    # both servers up at once, measured back to back, alternating which goes first: other work on a
    # shared machine then weighs on both modes alike, and an idle server takes no CPU
    servers = {"batching": Server(args.model, args.max_batch, args.max_wait_ms),
               "off": Server(args.model, 1, args.max_wait_ms)}
    try:
        for server in servers.values():
            server.wait()
        for server in servers.values():  # ONNX Runtime's first calls at each batch size, the allocator, the client
            asyncio.run(load(server.url, args.model, images, args.warm_up, top))
        for round_ in range(1, args.rounds + 1):
            for c in levels:
                for mode in ("batching", "off") if round_ % 2 else ("off", "batching"):
                    load_before = os.getloadavg()[0]
                    measured = asyncio.run(load(servers[mode].url, args.model, images, args.requests, c))
                    row = {"round": round_, "mode": mode, "max_batch": args.max_batch if mode == "batching" else 1,
                           **measured, "loadavg_1min": load_before}
                    results["rows"].append(row)
                    print(f"round {round_} {mode:>8} c={c:<3} {row['req_per_s']:7.1f} req/s  "
                          f"p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  errors {row['errors']}  "
                          f"(load {load_before:.2f})", flush=True)
        if args.rss_requests:
            pid = servers["batching"].proc.pid
            before = rss_mib(pid)
            r = asyncio.run(load(servers["batching"].url, args.model, images, args.rss_requests, top))
            after = rss_mib(pid)
            results["rss"] = {"requests": args.rss_requests, "before_mib": before, "after_mib": after,
                              "growth_mib": after - before, "errors": r["errors"], "req_per_s": r["req_per_s"]}
            print(f"RSS {before:.0f} MiB -> {after:.0f} MiB over {args.rss_requests} requests "
                  f"({r['errors']} errors, {r['req_per_s']:.1f} req/s)", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    results["machine"]["loadavg_after"] = os.getloadavg()
    print("\n| round | mode | concurrency | requests/s | p50 ms | p99 ms | errors | load |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        label = f"batching (max {r['max_batch']})" if r["mode"] == "batching" else "off (max batch 1)"
        print(f"| {r['round']} | {label} | {r['concurrency']} | {r['req_per_s']:.1f} | {r['p50_ms']:.0f} | "
              f"{r['p99_ms']:.0f} | {r['errors']} | {r['loadavg_1min']:.1f} |")
    for round_ in range(1, args.rounds + 1):
        on, off = (next(r for r in results["rows"] if (r["round"], r["mode"], r["concurrency"]) == (round_, m, top))
                   for m in ("batching", "off"))
        print(f"round {round_}, concurrency {top}: batching gives {on['req_per_s'] / off['req_per_s']:.2f}x "
              f"the requests/s of batching off")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
