"""Dynamic batching, as TorchServe and Triton do it: requests wait in a bounded queue and go through
the model together, up to `max_batch` items or `max_wait_ms` after the first one arrived (with 0, what
queued while the previous batch ran).

The model runs in one dedicated thread, so the event loop never waits on inference; a full queue
refuses new work (the server answers 503 with Retry-After) instead of growing without limit.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class QueueFull(Exception):
    """The batcher's queue cannot take the items now; retry later."""


class DynamicBatcher:
    """Collects submitted items into batches for `forward` (a list of items -> a list of results)."""

    def __init__(self, forward: Callable[[list], list], max_batch: int = 16, max_wait_ms: float = 5.0,
                 max_queue: int = 256, name: str = "model",
                 on_batch: Callable[[int, float], None] | None = None):
        """on_batch(images, seconds) is called after each batch the model ran (the server's metrics)."""
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        self.forward = forward
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.batches = 0
        self.items = 0
        self._pending: collections.deque = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"infer-{name}")

    @property
    def queued(self) -> int:
        """Items waiting for a batch."""
        return len(self._pending)

    def free(self) -> int:
        """How many more items the queue takes now."""
        return self.max_queue - len(self._pending)

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        """Stop the worker and fail whatever still waits."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._pending:
            _, fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(QueueFull("the server is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, items: list) -> list:
        """Queue the items (all or none) and wait for their results; QueueFull when there is no room."""
        if self._wake is None:
            raise RuntimeError("DynamicBatcher.start() was not called")
        if len(items) > self.free():
            raise QueueFull(f"{self.queued} item(s) already queued (limit {self.max_queue})")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._pending.extend(zip(items, futures))
        self._wake.set()
        return list(await asyncio.gather(*futures))

    async def run_exclusive(self, fn: Callable, *args) -> Any:
        """fn(*args) in the model's own inference thread, between two batches: work that uses the model
        otherwise than `forward` (a heatmap's backward pass) never runs at the same time as a batch."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    def _timed(self, items: list) -> tuple[list, float]:
        """forward(items) in the inference thread, and its own time (not the wait for the thread)."""
        start = time.perf_counter()
        results = self.forward(items)
        return results, time.perf_counter() - start

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            deadline = loop.time() + self.max_wait
            while len(self._pending) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            batch = [(item, fut) for item, fut in batch if not fut.done()]  # a client gone: skip its work
            if not batch:
                continue
            try:
                results, seconds = await loop.run_in_executor(self._executor, self._timed, [i for i, _ in batch])
            except Exception as e:  # noqa: BLE001  (every waiting request gets the error, the server lives on)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.batches += 1
            self.items += len(batch)
            if self.on_batch is not None:
                self.on_batch(len(batch), seconds)
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)
