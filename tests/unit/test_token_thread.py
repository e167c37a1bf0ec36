"""The token thread's hand-over of results to the event loop (hsm.pkcs11_signer._TokenThread): a lone
job's result is handed over at once, results of a backlog of OCSP work are handed over in batches (one
wake-up of the loop for several signatures), urgent work is never held back, and nothing held is lost
when the queue drains, on errors, or when the thread stops. No token: the jobs are plain functions."""
from __future__ import annotations

import asyncio
import threading

import pytest

from hsm import pkcs11_signer
from hsm.pkcs11_signer import MAX_HELD, _TokenThread
from hsm.signer import DEFERRABLE, URGENT


@pytest.fixture
def batches(monkeypatch):
    """The sizes of the batches handed to the event loop."""
    sizes: list[int] = []
    settle_all = pkcs11_signer._settle_all

    def counting(batch):
        sizes.append(len(batch))
        settle_all(batch)
    monkeypatch.setattr(pkcs11_signer, "_settle_all", counting)
    return sizes


@pytest.fixture
async def thread():
    t = _TokenThread()
    yield t
    t.stop()


async def test_a_lone_job_is_handed_over_at_once(thread, batches):
    for i in range(3):
        assert await asyncio.wait_for(thread.submit(DEFERRABLE, lambda i=i: i * 2), 5) == i * 2
    assert batches == [1, 1, 1]


async def test_a_backlog_is_handed_over_in_batches_in_order(thread, batches):
    gate = threading.Event()
    first = thread.submit(DEFERRABLE, gate.wait, 10)  # holds the thread until all are queued
    futures = [thread.submit(DEFERRABLE, lambda i=i: i) for i in range(200)]
    gate.set()
    assert await asyncio.wait_for(first, 10) is True
    assert await asyncio.wait_for(asyncio.gather(*futures), 10) == list(range(200))
    assert sum(batches) == 201
    assert len(batches) < 201 // 4, batches  # far fewer wake-ups than results
    assert max(batches) <= MAX_HELD
    assert batches[-1] == 1  # the last result, with nothing queued behind it, is not held


async def test_urgent_work_is_not_held_behind_a_backlog(thread, batches):
    gate, release = threading.Event(), threading.Event()
    first = thread.submit(DEFERRABLE, gate.wait, 10)
    backlog = [thread.submit(DEFERRABLE, release.wait, 10) for _ in range(100)]
    urgent = thread.submit(URGENT, lambda: "issued")
    gate.set()
    # The backlog cannot finish before the test releases it: the urgent result must come on its own.
    assert await asyncio.wait_for(urgent, 5) == "issued"
    release.set()
    assert all(await asyncio.wait_for(asyncio.gather(first, *backlog), 10))


async def test_errors_are_handed_over_like_results(thread):
    gate = threading.Event()
    first = thread.submit(DEFERRABLE, gate.wait, 10)

    def fail():
        raise ValueError("token said no")
    futures = [thread.submit(DEFERRABLE, fail if i % 3 == 0 else (lambda i=i: i)) for i in range(60)]
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(first, *futures, return_exceptions=True), 10)
    for i, r in enumerate(results[1:]):
        if i % 3 == 0:
            assert isinstance(r, ValueError)
        else:
            assert r == i


async def test_stop_hands_over_what_was_held(batches):
    t = _TokenThread()
    gate = threading.Event()
    first = t.submit(DEFERRABLE, gate.wait, 10)
    futures = [t.submit(DEFERRABLE, lambda i=i: i) for i in range(50)]
    gate.set()
    await asyncio.to_thread(t.stop)  # finishes the queue, then ends the thread
    assert await asyncio.wait_for(asyncio.gather(first, *futures), 5) == [True] + list(range(50))
    assert sum(batches) == 51


async def test_urgent_work_behind_urgent_work_goes_in_batches(thread, batches):
    """The signatures of an issuance batch: urgent results wait for the urgent ones queued behind them."""
    gate = threading.Event()
    first = thread.submit(URGENT, gate.wait, 10)
    futures = [thread.submit(URGENT, lambda i=i: i) for i in range(100)]
    gate.set()
    assert await asyncio.wait_for(first, 10) is True
    assert await asyncio.wait_for(asyncio.gather(*futures), 10) == list(range(100))
    assert sum(batches) == 101 and len(batches) < 101 // 4, batches
