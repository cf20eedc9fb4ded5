"""Checkpoint switches with the files in the page cache ("warm"), our engine against diffusers' from_single_file.

    python bench/checkpoint_switch.py A.safetensors B.safetensors [C ...] [--rounds 3] [--vs-diffusers]
                                      [--memory-limit GB] [--checkpoints-limit N]

Prints one JSON object to stdout (logs go to stderr). Every file is read once beforehand, so each load reads from
the page cache. Our engine is built as webui.py builds it (`bootstrap.build_engine`) with the app's allocator
switch, and loads the first file; then each round switches to every file in turn (A -> B -> C -> A ...) through
`Engine.load_checkpoint`, as a job naming another checkpoint or the page's checkpoint box does. Every file's
SHA-256 is computed before the timed switches (as it is after a file's first load: `cache.json`), so the
background hash does not share the CPU with them.

Each switch reports its wall time, the process's CPU seconds and page faults, the peak RSS while it ran (sampled
every 10 ms), the RSS after it, and whether the model in use was released before the read because the two would
not fit together (`released_first`: ModelManager._crowded; `--memory-limit` makes that happen at any size).

`--checkpoints-limit N`: then, in the same process, our engine again with the setting `sd_checkpoints_limit` at N
(the first run has A1111's default, 1): switches back to a file still loaded read nothing (`kept`: the model
switched to was one of those kept loaded).

`--vs-diffusers`: then, in the same process, `StableDiffusionPipeline.from_single_file` (SDXL: its XL pipeline)
loads the same files in the same order, with the same warm page cache; a script switching models drops the old
pipeline first (`del pipe`), and so does this one. diffusers has no switch of its own, so its rows are plain
warm loads of each file.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modules import offline  # noqa: E402

offline.apply()

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from bench.txt2img import (MB, RssSampler, _cpu_name, cpu_since, cpu_use, malloc_trim,  # noqa: E402
                           write_diffusers_config)
from modules import bootstrap, devices, logs, paths  # noqa: E402
from modules.hashing import HashCache  # noqa: E402
from modules.limits import Limits  # noqa: E402

log = logging.getLogger("bench.checkpoint_switch")


class Measured:
    """Wall time, CPU seconds and page faults of this process over a `with` block, and its peak RSS (`rss`)."""

    def __init__(self, rss: RssSampler):
        self.rss = rss

    def __enter__(self) -> Measured:
        self.rss.reset()
        self._cpu = cpu_use()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._start
        self.user, self.sys, self.faults = cpu_since(self._cpu)
        self.peak = self.rss.read_peak()

    def figures(self) -> dict:
        return {"s": round(self.wall, 3), "cpu_user_s": round(self.user, 2), "cpu_sys_s": round(self.sys, 2),
                "page_faults": self.faults, "peak_rss_mb": round(self.peak / MB),
                "rss_after_mb": round(self.rss.rss() / MB)}


def switch_plan(files: list[Path], rounds: int) -> list[Path]:
    """The loads after the first one: each round visits every file once, in the order given, starting after the
    first (so every load is a switch from another file)."""
    return [files[(i + 1) % len(files)] for i in range(rounds * len(files))]


def run_ours(files: list[Path], rounds: int, plan: devices.DevicePlan, rss: RssSampler, memory_limit: float | None,
             data_dir: Path, checkpoints_limit: int = 1) -> dict:
    p = paths.from_args(str(data_dir))
    paths.ensure_dirs(p)
    hashes = HashCache(p.hash_cache)
    engine = bootstrap.build_engine(p, plan, extra_files=tuple(files), hashes=hashes,
                                    limits=Limits(memory_limit_gb=memory_limit))
    engine.options.update({"sd_checkpoints_limit": checkpoints_limit})
    try:
        LOG_FLAG.take()
        for f in files:  # each file's SHA-256 once, as after its first load (cached in cache.json)
            engine.checkpoints.ensure_hash(engine.checkpoints.resolve(str(f)))
        with Measured(rss) as first:
            engine.load_checkpoint(str(files[0]))
        switches = []
        for f in switch_plan(files, rounds):
            before = engine.checkpoints.current
            kept = [m for m in engine.checkpoints.kept_models() if m.info.filename == f]
            with Measured(rss) as m:
                model = engine.load_checkpoint(str(f))
            switches.append({"to": f.name, **m.figures(), "released_first": LOG_FLAG.take(),
                             "kept": bool(kept) and model is kept[0], "previous_released": before.released})
            log.info("ours: %s", json.dumps(switches[-1]))
    finally:
        engine.queue.stop()
    return {"first_load": first.figures(), "switches": switches, **summary(switches)}


class LogFlag(logging.Handler):
    """Notes the model manager's warning that it released the current model before a read (ModelManager._crowded)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        if "before reading it" in record.getMessage():
            self.seen = True

    def take(self) -> bool:
        seen, self.seen = self.seen, False
        return seen


LOG_FLAG = LogFlag()


def run_diffusers(files: list[Path], rounds: int, plan: devices.DevicePlan, rss: RssSampler) -> dict:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    configs: dict[Path, tuple[Path, str]] = {}
    folders = []
    try:
        for f in files:
            folders.append(Path(tempfile.mkdtemp(prefix="bench-sd-config-")))
            configs[f] = write_diffusers_config(folders[-1], f, paths.from_args().default_sd1_config)
        malloc_trim()

        def load(f: Path):
            folder, family = configs[f]
            if family == "sdxl":
                pipe = StableDiffusionXLPipeline.from_single_file(
                    str(f), config=str(folder), local_files_only=True, torch_dtype=plan.unet_dtype,
                    add_watermarker=False)
            else:
                pipe = StableDiffusionPipeline.from_single_file(
                    str(f), config=str(folder), local_files_only=True, torch_dtype=plan.unet_dtype,
                    safety_checker=None, feature_extractor=None, requires_safety_checker=False)
            pipe.vae.to(plan.vae_dtype)
            return pipe.to(plan.device)

        with Measured(rss) as first:
            pipe = load(files[0])
        switches = []
        for f in switch_plan(files, rounds):
            with Measured(rss) as m:
                del pipe
                gc.collect()
                pipe = load(f)
            switches.append({"to": f.name, **m.figures()})
            log.info("diffusers: %s", json.dumps(switches[-1]))
        del pipe
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    return {"first_load": first.figures(), "switches": switches, **summary(switches)}


def summary(switches: list[dict]) -> dict:
    seconds = [s["s"] for s in switches]
    by_file: dict[str, list[float]] = {}
    for s in switches:
        by_file.setdefault(s["to"], []).append(s["s"])
    return {"switch_s_median": round(statistics.median(seconds), 3), "switch_s_max": round(max(seconds), 3),
            "switch_s_median_by_file": {k: round(statistics.median(v), 3) for k, v in by_file.items()},
            "peak_rss_mb": max(s["peak_rss_mb"] for s in switches)}


def _commit() -> str | None:
    """The checked-out commit of the code measured (None outside a git checkout)."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent.parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", type=Path, help="two or more checkpoint files")
    ap.add_argument("--rounds", type=int, default=3, help="how many times each file is switched to (default 3)")
    ap.add_argument("--vs-diffusers", action="store_true", help="then load the same files with diffusers")
    ap.add_argument("--memory-limit", type=float, default=None, metavar="GB",
                    help="our engine's --memory-limit (makes a switch release the model in use first)")
    ap.add_argument("--checkpoints-limit", type=int, default=None, metavar="N",
                    help="then our engine again with sd_checkpoints_limit N (several checkpoints kept loaded)")
    ap.add_argument("--use-cpu", nargs="*", default=["all"], help="as webui.py's flag (default: all)")
    args = ap.parse_args(argv)
    if len(args.checkpoints) < 2:
        ap.error("name at least two checkpoints to switch between")
    return args


def main(argv=None) -> None:
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # anything a library prints must not mix with the JSON
    args = parse_args(argv)
    logs.setup()
    logging.getLogger("modules.models.manager").addHandler(LOG_FLAG)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = os.getloadavg()
    files = [f.resolve() for f in args.checkpoints]
    for f in files:  # into the page cache: every load below is warm
        with open(f, "rb") as h:
            while h.read(64 * MB):
                pass
    plan = devices.plan(args.use_cpu, skip_cuda_test=True)
    devices.configure_torch(plan.device, keep_memory=True)
    rss = RssSampler()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-data-"))
    result: dict = {}
    try:
        result["ours"] = run_ours(files, args.rounds, plan, rss, args.memory_limit, data_dir)
        gc.collect()
        malloc_trim()
        if args.checkpoints_limit:
            shutil.rmtree(data_dir, ignore_errors=True)
            result[f"ours_checkpoints_limit_{args.checkpoints_limit}"] = run_ours(
                files, args.rounds, plan, rss, args.memory_limit, data_dir, args.checkpoints_limit)
            gc.collect()
            malloc_trim()
        if args.vs_diffusers:
            result["diffusers"] = run_diffusers(files, args.rounds, plan, rss)
    finally:
        rss.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    if "diffusers" in result:
        result["ratio_switch_s_median_ours_over_diffusers"] = round(
            result["ours"]["switch_s_median"] / result["diffusers"]["switch_s_median"], 3)
    result["files"] = [{"name": f.name, "bytes": f.stat().st_size} for f in files]
    result["commit"] = _commit()
    result["machine"] = {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                         "torch_threads": torch.get_num_threads(), "device": plan.describe,
                         "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
                         "started": started.isoformat(timespec="seconds")}
    result["settings"] = {"rounds": args.rounds, "memory_limit_gb": args.memory_limit,
                          "checkpoints_limit": args.checkpoints_limit}
    real_stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
