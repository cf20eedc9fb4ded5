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


def new_threads(before: set[threading.Thread]) -> set[threading.Thread]:
    """Threads alive now that were not in `before`, without the background hasher's. Threads of `before` may
    end meanwhile (an earlier test's queue worker, a hasher with nothing left to hash): that is not counted."""
    return {t for t in threading.enumerate() if t not in before and t.name != "hasher"}


def test_async_waiters_hold_no_threads_and_one_that_gives_up_leaves_the_job_running(queue):
    gate = threading.Event()
    finished = []

    async def main():
        first = queue.submit("t", lambda job: gate.wait(10) and "first")
        impatient = queue.submit("t", lambda job: finished.append("impatient") or "impatient")
        threads_before = set(threading.enumerate())
        jobs = [queue.submit("t", lambda job, i=i: i) for i in range(200)]
        waiters = [asyncio.ensure_future(j.wait_async()) for j in jobs]
        gone = asyncio.ensure_future(impatient.wait_async())
        await asyncio.sleep(0.1)
        assert new_threads(threads_before) == set()  # 201 waiters, no thread each
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


def test_remote_jobs_run_side_by_side_and_a_clients_answers_keep_its_order():
    """With one worker per replica, `remote` jobs overlap. A client's job that ends before its earlier job is held
    (it still counts as running) and answered right after it; another client's job is answered when it ends."""
    q = JobQueue(workers=3)
    first_may_end, answered = threading.Event(), []
    both_started = threading.Barrier(3, timeout=10)

    def slow(job):
        both_started.wait()
        assert first_may_end.wait(10)
        return "a1"

    def quick(name):
        def fn(job):
            both_started.wait()
            return name
        return fn

    try:
        a1 = q.submit("txt2img", slow, remote=True, client="a")
        a2 = q.submit("txt2img", quick("a2"), remote=True, client="a")
        b1 = q.submit("txt2img", quick("b1"), remote=True, client="b")
        for job in (a1, a2, b1):
            job.add_done_callback(lambda j: answered.append(j.result))
        assert b1.wait(10) == "b1"  # the other client is not held
        # (its done-callbacks run just after wait() returns: b1 must be in `answered` before a1 may end)
        deadline = time.monotonic() + 10
        while answered != ["b1"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert answered == ["b1"]
        deadline = time.monotonic() + 10
        while q.jobs_run < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert q.jobs_run == 2 and not a2.done.is_set()  # a2 has run, and waits for a1
        assert q.is_running(a2) and q.task(a2.task_id)[0] == "running" and q.ahead_of(a2) == 0
        assert q.running == [a1]  # what /sdapi/v1/progress and the cluster view call running
        first_may_end.set()
        assert a2.wait(10) == "a2"
        assert answered == ["b1", "a1", "a2"]
        assert not q.is_running(a2) and q.task(a2.task_id)[0] == "completed"
    finally:
        first_may_end.set()
        q.stop()


def test_a_cancelled_job_is_answered_at_once_and_releases_the_clients_later_jobs():
    q = JobQueue(workers=1)
    gate = threading.Event()
    try:
        running = q.submit("txt2img", lambda job: gate.wait(10), client="a")
        queued = q.submit("txt2img", lambda job: "never", client="a")
        after = q.submit("txt2img", lambda job: "after", client="a")
        assert q.cancel(queued) == "cancelled"
        assert queued.done.is_set()  # not held behind the running job
        gate.set()
        assert running.wait(10) is True and after.wait(10) == "after"
    finally:
        gate.set()
        q.stop()


def test_interrupt_and_skip_reach_a_jobs_relay_once_whenever_it_is_set():
    """A job run on a cluster replica relays the queue's interrupt and skip at once (modules/cluster/front.py),
    not at its next progress report; one asked for before the relay is set reaches it when it is set."""
    from modules.jobs import Job

    job, got = Job(id="a", kind="txt2img", fn=lambda _job: None), []
    job.request("skip")
    job.relay_requests(got.append)
    assert got == ["skip"]
    job.request("interrupt")
    assert got == ["skip", "interrupt"] and job.state.interrupted
    job.relay_requests(None)
    job.request("skip")
    assert got == ["skip", "interrupt"] and job.state.skipped  # the flag the local work checks

    for _ in range(300):  # a request racing the relay being set: exactly once, never lost or doubled
        job, got = Job(id="b", kind="txt2img", fn=lambda _job: None), []
        asker = threading.Thread(target=job.request, args=("interrupt",))
        asker.start()
        job.relay_requests(got.append)
        asker.join()
        assert got == ["interrupt"]


def test_the_queues_interrupt_skip_and_cancel_go_through_the_relay(queue):
    started, release, relayed = threading.Event(), threading.Event(), []

    def work(job):
        job.relay_requests(relayed.append)
        started.set()
        release.wait(30)

    job = queue.submit("txt2img", work)
    assert started.wait(30)
    queue.skip()
    queue.interrupt()
    assert queue.cancel(job) == "interrupted"
    assert relayed == ["skip", "interrupt", "interrupt"]
    release.set()
    job.done.wait(30)


def test_stop_after_current_asks_running_jobs_of_several_images_once_and_then_interrupts(queue):
    """A1111's "Don't Interrupt in the middle": its first Interrupt stops a job of more than one image after the one
    it is making (stop_generating); a job already stopping, or of one image, is left to an interrupt."""
    started, release, relayed = threading.Event(), threading.Event(), []

    def work(job):
        job.state.job_count = 3
        job.relay_requests(relayed.append)
        started.set()
        release.wait(30)

    job = queue.submit("txt2img", work)
    assert started.wait(30)
    assert queue.stop_after_current() is True
    assert job.state.stopping and not job.state.interrupted and relayed == ["stop"]
    assert queue.stop_after_current() is False  # the second click: the caller interrupts
    job.state.job_count = 1
    job.state.stopping = False
    assert queue.stop_after_current() is False  # one image: nothing to finish first
    release.set()
    job.done.wait(30)
    assert queue.stop_after_current() is False  # nothing running
