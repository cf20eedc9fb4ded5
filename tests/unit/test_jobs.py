"""The one job queue: arrival order, one at a time, failures and waiters that give up change nothing."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from modules.jobs import JobInterrupted, JobQueue


@pytest.fixture()
def queue():
    q = JobQueue()
    yield q
    q.stop()


def test_jobs_run_one_at_a_time_in_arrival_order(queue):
    gate = threading.Event()
    order, running, overlap = [], [], []

    def work(name):
        def fn(job):
            if running:
                overlap.append(name)
            running.append(name)
            if name == 0:
                gate.wait(10)
            time.sleep(0.001)
            order.append(name)
            running.remove(name)
            return name * 10
        return fn

    jobs = [queue.submit("t", work(i)) for i in range(30)]
    assert queue.queued >= 29  # the first is running (or about to), the rest wait
    gate.set()
    assert [j.wait(30) for j in jobs] == [i * 10 for i in range(30)]
    assert order == list(range(30)) and overlap == []


def test_a_failing_or_interrupted_job_does_not_stop_the_next(queue):
    def boom(job):
        raise RuntimeError("broken")

    def interrupted(job):
        job.state.interrupted = True
        job.check()

    failing, stopped, fine = queue.submit("t", boom), queue.submit("t", interrupted), queue.submit("t", lambda j: 42)
    with pytest.raises(RuntimeError, match="broken"):
        failing.wait(10)
    with pytest.raises(JobInterrupted):
        stopped.wait(10)
    assert fine.wait(10) == 42


def threads_but_hashers() -> int:
    """Threads alive, without the background hasher's: one that an earlier test's model load started may end
    at any moment (it ends when it has nothing left to hash)."""
    return sum(1 for t in threading.enumerate() if t.name != "hasher")


def test_async_waiters_hold_no_threads_and_one_that_gives_up_leaves_the_job_running(queue):
    gate = threading.Event()
    finished = []

    async def main():
        first = queue.submit("t", lambda job: gate.wait(10) and "first")
        impatient = queue.submit("t", lambda job: finished.append("impatient") or "impatient")
        threads_before = threads_but_hashers()
        jobs = [queue.submit("t", lambda job, i=i: i) for i in range(200)]
        waiters = [asyncio.ensure_future(j.wait_async()) for j in jobs]
        gone = asyncio.ensure_future(impatient.wait_async())
        await asyncio.sleep(0.1)
        assert threads_but_hashers() == threads_before  # 201 waiters, no thread each
        gone.cancel()  # the client of this one hangs up while it is queued
        gate.set()
        assert await first.wait_async() == "first"
        assert await asyncio.gather(*waiters) == list(range(200))
        assert impatient.done.is_set() and finished == ["impatient"]

    asyncio.run(main())


def test_waiting_after_the_job_finished_returns_at_once(queue):
    job = queue.submit("t", lambda j: "done")
    job.wait(10)
    assert asyncio.run(asyncio.wait_for(job.wait_async(), 5)) == "done"
