"""DynamicBatcher with a plain function as the model: what goes into each batch, and when the
queue is full. Bounds on waiting are generous timeouts, not timing asserts."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from dlscale.serve.batcher import DynamicBatcher, QueueFull


class Recorder:
    """A model that doubles its input and remembers the size of every batch it ran."""

    def __init__(self, gate: threading.Event | None = None):
        self.sizes: list[int] = []
        self.started = threading.Event()
        self.gate = gate

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        self.sizes.append(len(x))
        return x * 2


async def until_started(model: Recorder) -> None:
    """Until the model has a batch in hand (held at its gate), at most 10 s."""
    for _ in range(1000):
        if model.started.is_set():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the model never started a batch")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_a_full_batch_goes_at_once_without_waiting_for_the_delay():
    model = Recorder()

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=4, max_delay_ms=60_000, max_queue=16)
        try:  # the delay is a minute: only a full batch can answer within the 10 s bound
            return await asyncio.wait_for(asyncio.gather(*(batcher.submit(torch.full((1, 3), float(i))) for i in range(4))), 10)
        finally:
            batcher.close()

    outs = run(main())
    assert model.sizes == [4]
    for i, out in enumerate(outs):  # each request gets its own rows back
        assert torch.equal(out, torch.full((1, 3), 2.0 * i))


def test_a_lone_request_is_batched_alone_after_the_delay():
    model = Recorder()

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=8, max_delay_ms=20, max_queue=16)
        try:
            first = await asyncio.wait_for(batcher.submit(torch.ones(1, 2)), 10)
            second = await asyncio.wait_for(batcher.submit(torch.ones(2, 2)), 10)
            return first, second
        finally:
            batcher.close()

    first, second = run(main())
    assert model.sizes == [1, 2]
    assert first.shape == (1, 2) and second.shape == (2, 2)


def test_requests_of_several_samples_share_a_batch_and_get_their_own_rows():
    gate = threading.Event()
    model = Recorder(gate)

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=6, max_delay_ms=60_000, max_queue=16)
        try:
            blocker = asyncio.ensure_future(batcher.submit(torch.zeros(6, 1)))  # a full batch: runs, held at the gate
            await until_started(model)
            sizes = (1, 2, 3)  # these queue while the model is busy, then fill the next batch exactly
            waiting = [asyncio.ensure_future(batcher.submit(torch.arange(n, dtype=torch.float32)[:, None] + 10 * n)) for n in sizes]
            await asyncio.sleep(0.05)
            gate.set()
            await blocker
            return sizes, await asyncio.wait_for(asyncio.gather(*waiting), 10)
        finally:
            gate.set()
            batcher.close()

    sizes, outs = run(main())
    assert model.sizes == [6, 6]
    for n, out in zip(sizes, outs):
        assert torch.equal(out, 2 * (torch.arange(n, dtype=torch.float32)[:, None] + 10 * n))


def test_a_full_queue_raises_queue_full_and_the_queued_requests_still_finish():
    gate = threading.Event()
    model = Recorder(gate)

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=1, max_delay_ms=0, max_queue=2)
        try:
            running = asyncio.ensure_future(batcher.submit(torch.ones(1, 1)))
            await until_started(model)  # the first request is in the model, held at the gate
            queued = [asyncio.ensure_future(batcher.submit(torch.ones(1, 1))) for _ in range(2)]
            await asyncio.sleep(0)  # let them enter the queue
            with pytest.raises(QueueFull):
                await batcher.submit(torch.ones(1, 1))
            gate.set()
            return await asyncio.wait_for(asyncio.gather(running, *queued), 10)
        finally:
            gate.set()
            batcher.close()

    outs = run(main())
    assert len(outs) == 3 and model.sizes == [1, 1, 1]


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on():
    calls = []

    def flaky(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("model broke")
        return x

    async def main():
        batcher = DynamicBatcher(flaky, max_batch_size=4, max_delay_ms=1, max_queue=4)
        try:
            with pytest.raises(RuntimeError, match="model broke"):
                await asyncio.wait_for(batcher.submit(torch.ones(1, 1)), 10)
            return await asyncio.wait_for(batcher.submit(torch.ones(1, 1)), 10)
        finally:
            batcher.close()

    assert torch.equal(run(main()), torch.ones(1, 1))
    assert calls == [1, 1]


def test_metrics_record_batches_and_waits():
    model = Recorder()

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=2, max_delay_ms=60_000, max_queue=4)
        try:
            await asyncio.wait_for(asyncio.gather(batcher.submit(torch.ones(1, 1)), batcher.submit(torch.ones(1, 1))), 10)
            return batcher.metrics
        finally:
            batcher.close()

    metrics = run(main())
    text = metrics.text()
    assert 'dlscale_batch_size_bucket{le="1"} 0' in text and 'dlscale_batch_size_bucket{le="2"} 1' in text
    assert "dlscale_queue_seconds_count 2" in text and "dlscale_compute_seconds_count 1" in text


def test_after_a_batch_of_one_request_a_lone_request_goes_at_once_and_waiting_resumes_under_load():
    """The delay is a minute: a lone request answered within the 10 s bound went without
    waiting; one still unanswered after 0.3 s is waiting for company."""
    gate = threading.Event()
    model = Recorder(gate)

    async def main():
        batcher = DynamicBatcher(model, max_batch_size=4, max_delay_ms=60_000, max_queue=16)
        try:
            gate.set()
            await asyncio.wait_for(batcher.submit(torch.zeros(4, 1)), 10)  # one request, a full batch
            await asyncio.wait_for(batcher.submit(torch.ones(1, 1)), 10)  # after a batch of one request: at once
            gate.clear()
            model.started.clear()
            busy = asyncio.ensure_future(batcher.submit(torch.zeros(4, 1)))
            await until_started(model)  # held at the gate; these three queue meanwhile
            queued = [asyncio.ensure_future(batcher.submit(torch.ones(1, 1))) for _ in range(3)]
            await asyncio.sleep(0.05)
            gate.set()
            await asyncio.wait_for(asyncio.gather(busy, *queued), 10)  # a batch of three requests
            lone = asyncio.ensure_future(batcher.submit(torch.ones(1, 1)))
            done, _ = await asyncio.wait({lone}, timeout=0.3)
            still_waiting = not done
            company = [asyncio.ensure_future(batcher.submit(torch.ones(1, 1))) for _ in range(3)]  # fills the batch
            await asyncio.wait_for(asyncio.gather(lone, *company), 10)
            return still_waiting
        finally:
            gate.set()
            batcher.close()

    still_waiting = run(main())
    assert model.sizes == [4, 1, 4, 3, 4]
    assert still_waiting, "after a batch of several requests, a lone request should wait for a fuller batch"
