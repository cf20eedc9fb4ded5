"""Images per minute of the app without Ray and with --ray-workers 1 and 2, on this machine, with the built-in
demo model: each setup is a live server (webui.py --api on 127.0.0.1) that gets --jobs txt2img requests from
--clients concurrent clients. Prints one JSON object.

    python bench/cluster_throughput.py [--jobs 12] [--clients 6] [--steps 20] [--size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.server import start_server, stop_server  # noqa: E402


def run(flags: list[str], jobs: int, clients: int, body: dict) -> dict:
    data = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    started = time.perf_counter()
    proc, url = start_server(data, "--api", *flags, timeout=900)
    ready_s = time.perf_counter() - started
    try:
        requests.post(url + "/sdapi/v1/txt2img", json={**body, "seed": 1}, timeout=900).raise_for_status()  # warm
        seeds = list(range(100, 100 + jobs))
        lock = threading.Lock()

        def client() -> None:
            while True:
                with lock:
                    if not seeds:
                        return
                    seed = seeds.pop(0)
                requests.post(url + "/sdapi/v1/txt2img", json={**body, "seed": seed}, timeout=900).raise_for_status()

        start = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
        return {"flags": " ".join(flags) or "(no Ray)", "start_s": round(ready_s, 1), "jobs": jobs,
                "seconds": round(seconds, 2), "images_per_minute": round(jobs / seconds * 60, 1)}
    finally:
        stop_server(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    body = {"prompt": "a red circle on a blue background", "steps": args.steps, "width": args.size,
            "height": args.size, "sampler_name": "Euler a"}
    out = {"cpus": os.cpu_count(), "load_1min_before": round(os.getloadavg()[0], 2), "request": body,
           "clients": args.clients, "runs": []}
    for flags in ([], ["--ray-workers", "1"], ["--ray-workers", "2"]):
        out["runs"].append(run(flags, args.jobs, args.clients, body))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
