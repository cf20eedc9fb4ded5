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

# Activations as a U-Net step makes them, four rounds over: blocks of 8-24 MB (under the mmap threshold), several
# alive at once, written and freed. Page faults are counted per round: the first round takes its pages from the
# kernel either way; what matters is whether later rounds do again.
SCRIPT = """
import hashlib, json, resource, sys
import torch
torch.set_num_threads(1)  # the faults are then this thread's writes, not a thread pool's start-up
from modules import bootstrap, cmd_args, devices, paths
from modules.generation.params import GenerationParams

SIZES_MB = (24, 16, 24, 8, 24, 16, 24, 24)
args = cmd_args.parse(["--data-dir", sys.argv[2], "--use-cpu", "all"])
if sys.argv[1] == "app":  # the app's start-up (flags -> engine)
    engine = bootstrap.build(args)
else:  # the same engine with glibc's defaults
    plan = devices.plan(args.use_cpu)
    devices.configure_torch(plan.device, keep_memory=False)
    engine = bootstrap.build_engine(paths.from_args(sys.argv[2]), plan, builtin_files=paths.BUILTIN_MODELS)
image = engine.txt2img(GenerationParams(prompt="a red circle", width=64, height=64, steps=3, seed=1,
                                        save_images=False)).images[0]

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def in_main_heap(address):  # glibc's main heap is the [heap] mapping; a thread's own arena or a mapped block is not
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            low, high = (int(x, 16) for x in line.split()[0].split("-"))
            return low <= address < high
    return False

rounds, placed = [], []
def job():
    block = torch.zeros(31 << 18)  # 31 MB
    placed.append(in_main_heap(block.data_ptr()))
    del block
    for _ in range(4):
        before = faults()
        alive = [torch.zeros(mb << 18) for mb in SIZES_MB]  # float32: 4 bytes each
        del alive
        rounds.append(faults() - before)
engine.queue.submit("probe", lambda _job: job()).wait()  # on the engine's worker thread, as its jobs run
engine.queue.stop()
digest = hashlib.sha256(image.tobytes()).hexdigest()
print(json.dumps({"rounds": rounds, "pages": sum(SIZES_MB) * 256, "in_main_heap": placed[0], "image": digest}))
"""


def run(mode: str, tmp_path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(tmp_path / mode)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_after_start_up_a_job_reuses_the_memory_it_freed_and_makes_the_same_image(tmp_path):
    default, kept = run("default", tmp_path), run("app", tmp_path)
    # glibc's defaults: the worker thread allocates from an arena of its own (heaps of at most 64 MB, whose larger
    # blocks are mapped and unmapped one by one), so its 31 MB block is not in the main heap
    assert not default["in_main_heap"], default
    # after the app's start-up: every thread shares the main heap, blocks under the threshold come from it, and
    # what a round freed serves the next round: almost no page is faulted in again after the first round
    assert kept["in_main_heap"], kept
    assert min(kept["rounds"][1:]) < 0.05 * kept["pages"], kept
    assert kept["image"] == default["image"]  # where memory comes from changes no pixel
