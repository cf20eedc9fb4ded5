"""Memory and time of the Checkpoint Merger on full-size files: ours (streamed) and A1111's way (all in memory).

    python bench/merge_memory.py A.safetensors B.safetensors C.safetensors --out-dir /tmp/merge-out \
        [--method "Add difference"] [--reference]

Make the inputs with bench/make_sd15_checkpoint.py (or make_sdxl_checkpoint.py) and three seeds; the same file
three times also works (the memory figures are the same: every tensor is still read three times). Prints JSON:
the input and output sizes, seconds, the process's peak RSS during the merge and the peak of its anonymous part
(RSS less file-backed pages: the process's own memory), sampled every 10 ms. `--reference` then merges the same
files as A1111 does (`read_state_dict` of all three, the formula over whole dicts, `safetensors.torch.save_file`),
in the same process, after ours, and reports the same figures for it. The outputs are deleted afterwards."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modules.models import checkpoint_file, merge  # noqa: E402


class Peak:
    """The highest RSS and anonymous RSS of this process while the block runs."""

    def __enter__(self):
        self._proc = psutil.Process()
        self.rss = self.anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        self.started = time.perf_counter()
        return self

    def _watch(self):
        while not self._stop.is_set():
            info = self._proc.memory_info()
            self.rss, self.anon = max(self.rss, info.rss), max(self.anon, info.rss - info.shared)
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started
        self._stop.set()
        self._thread.join()

    def figures(self) -> dict:
        return {"seconds": round(self.seconds, 1), "peak_rss_mb": round(self.rss / 2**20),
                "peak_rss_anon_mb": round(self.anon / 2**20)}


def ours(paths: list[Path], method: str, out_dir: Path, m: float) -> tuple[dict, Path]:
    inputs = [merge.MergeInput(p, p.name, p.stem) for p in paths]
    request = merge.MergeRequest(inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None, method, m,
                                 custom_name="bench-ours", config_source="Don't", add_merge_recipe=False)
    with Peak() as peak:
        outcome = merge.merge(request, out_dir)
    return peak.figures(), outcome.path


def a1111_way(paths: list[Path], method: str, out_dir: Path, m: float) -> tuple[dict, Path]:
    from safetensors.torch import save_file
    target = out_dir / "bench-reference.safetensors"
    with Peak() as peak:
        theta_1 = checkpoint_file.read_state_dict(paths[1])
        if method == "Add difference":
            theta_2 = checkpoint_file.read_state_dict(paths[2])
            for key in theta_1:
                if "model" in key:
                    theta_1[key] = theta_1[key] - theta_2[key] if key in theta_2 else torch.zeros_like(theta_1[key])
            del theta_2
        theta_0 = checkpoint_file.read_state_dict(paths[0])
        for key in theta_0:
            if "model" in key and key in theta_1:
                a, b = theta_0[key], theta_1[key]
                theta_0[key] = a + m * b if method == "Add difference" else (1 - m) * a + m * b
        del theta_1
        save_file(theta_0, str(target), metadata={"format": "pt"})
        del theta_0
    return peak.figures(), target


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("inputs", nargs="+", type=Path, help="A B [C]")
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--method", default="Add difference", choices=["Weighted sum", "Add difference"])
    ap.add_argument("--multiplier", type=float, default=0.5)
    ap.add_argument("--reference", action="store_true", help="also merge A1111's way, in memory")
    args = ap.parse_args()
    if args.method == "Add difference" and len(args.inputs) != 3:
        ap.error("Add difference takes three files")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    result = {"inputs": [str(p) for p in args.inputs],
              "input_mb": [round(p.stat().st_size / 2**20) for p in args.inputs], "method": args.method,
              "machine": {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
              "versions": {"torch": torch.__version__}}
    figures, path = ours(args.inputs, args.method, args.out_dir, args.multiplier)
    result["ours"] = {**figures, "output_mb": round(path.stat().st_size / 2**20)}
    print(json.dumps({"ours": result["ours"]}), file=sys.stderr)
    if args.reference:
        ref_figures, ref_path = a1111_way(args.inputs, args.method, args.out_dir, args.multiplier)
        result["a1111_way"] = {**ref_figures, "output_mb": round(ref_path.stat().st_size / 2**20)}
        ours_sd, ref_sd = (checkpoint_file.SafetensorsReader(p) for p in (path, ref_path))
        with ours_sd, ref_sd:
            worst = 0.0
            for key in ours_sd.keys():
                a, b = ours_sd.read(key), ref_sd.read(key)
                if a.is_floating_point():
                    worst = max(worst, float((a.float() - b.float()).abs().max()))
        result["max_abs_difference"] = worst
        ref_path.unlink()
    path.unlink()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
