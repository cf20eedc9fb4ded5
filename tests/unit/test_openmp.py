"""modules/openmp.py: a thread that waits for a job hands back its OpenMP helper threads, so that the process
holds no more of them than the job's thread needs (see the module for why: libgomp stops spinning when there are
more than cores). Checked on the threads themselves, never on timings (bench/openmp_teams.py has those)."""

from __future__ import annotations

import os
import time

import torch

from modules import openmp
from modules.jobs import JobQueue


def thread_ids() -> set[str]:
    return set(os.listdir("/proc/self/task"))


def parallel_work() -> None:
    a = torch.randn(512, 512)
    for _ in range(3):
        a @ a


def test_release_hands_back_the_calling_threads_helpers():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        before = thread_ids()
        parallel_work()  # this thread's OpenMP team: one helper beside it
        helpers = thread_ids() - before
        assert openmp.release()
        assert not helpers & thread_ids()  # they are gone
        parallel_work()  # a new team when this thread computes again
        assert thread_ids() - before
        openmp.release()
    finally:
        torch.set_num_threads(threads)


def test_waiting_for_a_job_hands_back_the_waiting_threads_helpers():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    queue = JobQueue()
    try:
        openmp.release()
        before = thread_ids()
        parallel_work()
        mine = thread_ids() - before
        assert mine
        def work(_job) -> bool:  # the waiting thread's helpers go once it waits (the job may start before that)
            deadline = time.monotonic() + 30
            while mine & thread_ids() and time.monotonic() < deadline:
                time.sleep(0.01)
            return not mine & thread_ids()

        assert queue.submit("work", work).wait(60)
    finally:
        queue.stop()
        torch.set_num_threads(threads)

