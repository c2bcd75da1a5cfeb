"""Dynamic batching with Triton's semantics: requests of one or more samples queue up; a full
batch (``max_batch_size`` samples) goes at once, otherwise the oldest request waits at most
``max_delay_ms`` before whatever has queued goes as one batch. The model runs in one worker
thread, so the event loop keeps accepting requests while a batch computes, and the requests
that arrive meanwhile form the next batch.

The delay is an upper bound, and it is spent only while waiting pays: a request that finds
the model idle waits for company only if the previous batch held more than one request.
A lone client (each request sent after the previous answer) would otherwise pay the whole
delay on every request for batches of one; under load, requests queue up while a batch
computes, batches hold several again, and waiting resumes (``benchmarks/serve``)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from dlscale.serve.metrics import Metrics


class QueueFull(Exception):
    """``max_queue`` requests already wait: the client should retry later (HTTP 503)."""


@dataclass
class _Request:
    x: torch.Tensor
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """``await submit(batch)`` answers the rows of ``run_batch(concatenated batches)`` that
    belong to ``batch``. A request larger than ``max_batch_size`` runs as a batch of its own."""

    def __init__(
        self,
        run_batch: Callable[[torch.Tensor], torch.Tensor],
        max_batch_size: int = 32,
        max_delay_ms: float = 5.0,
        max_queue: int = 1024,
        metrics: Metrics | None = None,
    ):
        if max_batch_size < 1 or max_delay_ms < 0 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be at least 1 and max_delay_ms at least 0")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlscale-model")
        self._queue: deque[_Request] = deque()
        self._samples = 0  # samples waiting in the queue
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._waiting_pays = True  # did the last batch hold more than one request?

    @property
    def pending(self) -> int:
        """Requests waiting for a batch (not counting the one computing)."""
        return len(self._queue)

    async def submit(self, x: torch.Tensor) -> torch.Tensor:
        if len(self._queue) >= self.max_queue:
            raise QueueFull(f"{len(self._queue)} requests are waiting (--max-queue {self.max_queue})")
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._arrived = asyncio.Event()
            self._task = loop.create_task(self._dispatch())
        request = _Request(x, loop.create_future())
        self._queue.append(request)
        self._samples += len(x)
        self._arrived.set()
        return await request.future

    async def run_in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the model's thread: never concurrently with a batch."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def _dispatch(self) -> None:
        assert self._arrived is not None
        while True:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            deadline = self._queue[0].arrived + (self.max_delay if self._waiting_pays else 0.0)
            while self._samples < self.max_batch_size:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            await self._run(self._take())

    def _take(self) -> list[_Request]:
        """The oldest requests whose samples fit one batch (at least one request)."""
        taken = [self._queue.popleft()]
        size = len(taken[0].x)
        while self._queue and size + len(self._queue[0].x) <= self.max_batch_size:
            taken.append(self._queue.popleft())
            size += len(taken[-1].x)
        self._samples -= size
        self._waiting_pays = len(taken) > 1
        return [r for r in taken if not r.future.done()]  # a client that went away is not computed for

    async def _run(self, requests: list[_Request]) -> None:
        if not requests:
            return
        started = time.perf_counter()
        waits = [started - r.arrived for r in requests]
        x = requests[0].x if len(requests) == 1 else torch.cat([r.x for r in requests])
        try:
            out = await asyncio.get_running_loop().run_in_executor(self.executor, self.run_batch, x)
        except Exception as exc:  # the model failed on this batch: its requests fail, the server goes on
            for r in requests:
                if not r.future.done():
                    r.future.set_exception(exc)
            return
        self.metrics.batch(len(x), waits, time.perf_counter() - started)
        start = 0
        for r in requests:
            if not r.future.done():
                r.future.set_result(out[start : start + len(r.x)])
            start += len(r.x)
