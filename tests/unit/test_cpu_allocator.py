"""The CPU allocator switch (devices.keep_freed_memory, applied by configure_torch): memory a job frees is kept for
its next allocation, so a U-Net step does not pay the kernel for fresh pages again. Each case runs in a fresh
Python process, because glibc's settings are process-wide and cannot be put back."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Activations as a job's steps make them, four rounds over: blocks of 8-300 MB, each allocated, written and freed
# (most of them over glibc's largest default mmap threshold, 32 MB). Page faults are counted per round: the first
# round takes its pages from the kernel either way; what matters is whether later rounds do again.
SCRIPT = """
import json, resource, sys
import torch
torch.set_num_threads(1)  # the faults are then this thread's writes, not a thread pool's start-up
from modules import bootstrap, cmd_args

SIZES_MB = (40, 100, 8, 300)
if sys.argv[1] == "app":  # the app's start-up (flags -> engine), then the job on the engine's own worker thread
    engine = bootstrap.build(cmd_args.parse(["--data-dir", sys.argv[2], "--no-builtin-model", "--use-cpu", "all"]))
    run = lambda fn: engine.queue.submit("probe", lambda job: fn()).wait()
else:  # glibc's defaults, on a worker thread too
    import threading
    def run(fn):
        t = threading.Thread(target=fn); t.start(); t.join()

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

rounds = []
def job():
    for _ in range(4):
        before = faults()
        for mb in SIZES_MB:
            torch.zeros(mb << 18)  # float32: 4 bytes each; freed at once
        rounds.append(faults() - before)
run(job)
print(json.dumps({"rounds": rounds, "pages": sum(SIZES_MB) * 256}))
"""


def fault_rounds(mode: str, tmp_path: Path) -> tuple[list[int], int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(tmp_path / "data")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    return figures["rounds"], figures["pages"]


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_after_start_up_a_job_reuses_the_memory_it_freed_instead_of_faulting_in_new_pages(tmp_path):
    default, pages = fault_rounds("default", tmp_path)
    kept, _ = fault_rounds("app", tmp_path)
    # glibc's defaults: every round maps its large blocks afresh, so nearly every page faults again
    assert min(default[1:]) > 0.8 * pages, default
    # after the app's start-up: the job, on the queue's worker thread, faults in almost nothing after its first round
    assert min(kept[1:]) < 0.05 * pages, kept
    assert kept[0] > 0.8 * pages  # the pages are really written (the first round takes them from the kernel)
