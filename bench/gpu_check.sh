#!/usr/bin/env bash
# The GPU check (issue 17 part 7), one prepared run on the device machine (an NVIDIA H100/H200, Python 3.12 with
# torch, no network), from the repository root, with the wheels of bench/gpu_wheels.sh carried in .whl/:
#   1. installs the carried wheels into $GPU_CHECK_WORK/site and puts it first on PYTHONPATH;
#   2. runs the CUDA tests (pytest -m cuda tests/cuda) while random-weight SD 1.5 and SDXL checkpoints are built on
#      the GPU (bench/make_sd15_checkpoint.py / make_sdxl_checkpoint.py --device cuda; never committed);
#   3. benchmarks our engine against diffusers' pipelines on the same file and GPU in fp16 (bench/txt2img.py
#      --vs-diffusers): SD 1.5 at 512x512 and SDXL at 1024x1024, 20 steps of Euler a, CFG 7, both orders where the
#      time allows;
#   4. prints a summary (JSON): CUDA tests passed/failed, it/s ours vs diffusers and their ratio, the largest pixel
#      difference between the two engines' images, NaN checks, peak GPU memory.
# Each phase has a timeout and the next one runs whatever the last one did; one JSON line per result goes to stdout
# and to $OUT/results.jsonl (full benchmark reports there), the phases' output to $OUT/gpu_check.log, the summary
# to $OUT/summary.json and the first order's images to $OUT/*.png (7 files: the device returns at most 8).
# $OUT is set by the device tool; elsewhere ./gpu-results. The whole run keeps within GPU_CHECK_BUDGET_S (540 s:
# the device call's timeout_s is 570). Exit status 0 when every phase ran and the CUDA tests passed, else 1.
#
# Dry run on any machine (GPU_CHECK_DRY=1): the tiny test checkpoints instead of full-size ones, 64x64, 2 steps,
# the CUDA tests' code on the CPU with fp16 weights (CUDA_TESTS_ON_CPU=1), the wheels installed for Python 3.12 but
# not used; it checks that every phase's code path runs, not the GPU. Other switches: GPU_CHECK_PYTHON (python3),
# GPU_CHECK_WORK (/tmp/gpu-check: checkpoints, logs, the installed wheels), GPU_CHECK_BUDGET_S.
set -uo pipefail # no -e: a phase that fails is recorded, and the next one runs
cd "$(dirname "$0")/.." || exit 1

dry=${GPU_CHECK_DRY:-0}
python=${GPU_CHECK_PYTHON:-python3}
work=${GPU_CHECK_WORK:-/tmp/gpu-check}
out=${OUT:-./gpu-results}
start=$(date +%s)
if [ "$dry" = 1 ]; then
    budget=${GPU_CHECK_BUDGET_S:-1200}
    sd15_size=64 sdxl_size=64 steps=2 sd15_repeat=1 sdxl_repeat=1
else
    budget=${GPU_CHECK_BUDGET_S:-540}
    sd15_size=512 sdxl_size=1024 steps=20 sd15_repeat=3 sdxl_repeat=2
fi
deadline=$((start + budget))
summary_reserve=15 # seconds kept for the summary

mkdir -p "$out" "$work"
results=$out/results.jsonl
log=$out/gpu_check.log
: >"$results"
: >"$log"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
failed=0

remaining() { echo $((deadline - $(date +%s))); }

# result PHASE STATUS SECONDS [JSON_FIELDS]: one JSON line to stdout and results.jsonl (FIELDS: '"k": v, ...')
result() {
    local line="{\"phase\": \"$1\", \"status\": \"$2\", \"seconds\": $3${4:+, $4}}"
    echo "$line"
    echo "$line" >>"$results"
    case $2 in ok) ;; *) failed=1 ;; esac
}

# phase_timeout MAX MIN: MAX capped by the time left (less the summary's reserve); empty when under MIN
phase_timeout() {
    local left=$(($(remaining) - summary_reserve))
    local t=$(($1 < left ? $1 : left))
    if [ "$t" -ge "$2" ]; then echo "$t"; fi
}

# run_logged NAME TIMEOUT STDOUT_FILE CMD...: run with a timeout, stderr (and stdout unless STDOUT_FILE) into
# NAME's log, appended to gpu_check.log; sets $rc, $secs and $status (ok, failed-N, timeout)
run_logged() {
    local name=$1 t=$2 stdout_file=$3
    shift 3
    local phase_log=$work/$name.log t0
    t0=$(date +%s)
    echo "--- $name: $* (timeout ${t}s)" >>"$log"
    if [ -n "$stdout_file" ]; then
        timeout -k 10 "$t" "$@" >"$stdout_file" 2>"$phase_log"
    else
        timeout -k 10 "$t" "$@" >"$phase_log" 2>&1
    fi
    rc=$?
    secs=$(($(date +%s) - t0))
    cat "$phase_log" >>"$log"
    echo "--- $name: exit $rc after ${secs}s" >>"$log"
    case $rc in 0) status=ok ;; 124 | 137) status=timeout ;; *) status=failed-$rc ;; esac
}

# --- 0. the machine ---------------------------------------------------------------------------------------------
{ command -v nvidia-smi >/dev/null && nvidia-smi; } >>"$log" 2>&1
env_json=$("$python" - "$dry" 2>>"$log" <<'PY'
import json, os, platform, sys
import torch
info = {"dry_run": sys.argv[1] == "1", "python": platform.python_version(), "torch": torch.__version__,
        "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(), "cpus": os.cpu_count()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_memory_mb=round(p.total_memory / 2**20), capability=f"{p.major}.{p.minor}")
print(json.dumps(info)[1:-1])
PY
)
result env "$([ -n "$env_json" ] && echo ok || echo failed)" 0 "$env_json"

# --- 1. the carried wheels ----------------------------------------------------------------------------------------
shopt -s nullglob
wheels=(.whl/*.whl)
shopt -u nullglob
site=$work/site
if [ "${#wheels[@]}" -eq 0 ]; then
    result wheels failed 0 '"error": "no .whl/*.whl: run bench/gpu_wheels.sh here and carry .whl"'
else
    install=(-m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site")
    if [ "$dry" = 1 ]; then # this Python may not be 3.12: install for the device's, do not import them
        install+=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    fi
    rm -rf "$site"
    run_logged wheels 120 "" "$python" "${install[@]}" "${wheels[@]}"
    result wheels "$status" "$secs" "\"wheels\": ${#wheels[@]}, \"installed_files\": $(find "$site" -type f 2>/dev/null | wc -l)"
    if [ "$dry" != 1 ]; then
        export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
    fi
fi
versions=$("$python" -c '
import json, diffusers, pydantic, torchsde, transformers
from importlib.metadata import version
print(json.dumps({n: version(n) for n in ("diffusers", "transformers", "torchsde", "pydantic", "accelerate",
                                          "safetensors", "huggingface-hub", "numpy", "pytest")})[1:-1])' 2>>"$log")
result packages "$([ -n "$versions" ] && echo ok || echo failed)" 0 "$versions"

# --- 2. checkpoints (in the background) and the CUDA tests --------------------------------------------------------
sd15=$work/sd15-random.safetensors
sdxl=$work/sdxl-random.safetensors
build() { # build NAME MAX CMD...: in the background; NAME.rc holds "exit-status seconds" when done
    local name=$1 t=$2
    shift 2
    rm -f "$work/$name.rc" "$work/$name.pid"
    (
        t0=$(date +%s)
        timeout -k 10 "$t" "$@" >"$work/$name.log" 2>&1 &
        echo $! >"$work/$name.pid" # the timeout's: stop_builds signals it, and it ends the build
        wait $!
        echo "$? $(($(date +%s) - t0))" >"$work/$name.rc"
    ) &
}
stop_builds() { # a build still running when the budget is spent
    local name
    for name in build_sd15 build_sdxl; do
        if [ ! -f "$work/$name.rc" ] && [ -f "$work/$name.pid" ]; then
            kill "$(cat "$work/$name.pid")" 2>/dev/null
        fi
    done
    wait
}
if [ "$dry" = 1 ]; then
    sd15=$work/tiny-sd1/tiny-sd1.safetensors
    sdxl=$work/tiny-sdxl/tiny-sdxl.safetensors
    tiny='import sys; from pathlib import Path; sys.path.insert(0, "."); from tests.support import tiny_models
tiny_models.build(sys.argv[1], seed=1).write(Path(sys.argv[2]))'
    build build_sd15 300 "$python" -c "$tiny" sd1 "$sd15"
    build build_sdxl 300 "$python" -c "$tiny" sdxl "$sdxl"
else
    rm -f "$sd15" "$sdxl"
    build build_sd15 240 "$python" bench/make_sd15_checkpoint.py "$sd15" --device cuda
    build build_sdxl 300 "$python" bench/make_sdxl_checkpoint.py "$sdxl" --device cuda
fi

if t=$(phase_timeout 180 30) && [ -n "$t" ]; then
    test_env=()
    [ "$dry" = 1 ] && test_env=(env CUDA_TESTS_ON_CPU=1)
    junit=$work/cuda-tests.xml
    rm -f "$junit"
    run_logged cuda_tests "$t" "" ${test_env[@]+"${test_env[@]}"} "$python" -m pytest -p no:cacheprovider -m cuda \
        tests/cuda -rA -o junit_family=legacy --junitxml="$junit"
    counts=$("$python" - "$junit" 2>>"$log" <<'PY'
import json, sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suite = root if root.tag == "testsuite" else root.find("testsuite")
n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
props = {}
for case in suite.iter("testcase"):
    for p in case.iter("property"):
        props[f"{case.get('name')}.{p.get('name')}"] = p.get("value")
print(json.dumps({"passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"], "failed": n["failures"],
                  "errors": n["errors"], "skipped": n["skipped"], "properties": props})[1:-1])
PY
)
    result cuda_tests "$status" "$secs" "${counts:-\"passed\": 0, \"failed\": null, \"error\": \"no junit report\"}"
else
    result cuda_tests skipped-budget 0
fi

# wait_build NAME: wait for a background build (until the budget allows) and record it; true when it succeeded
wait_build() {
    local name=$1 r
    while [ ! -f "$work/$name.rc" ] && [ "$(remaining)" -gt "$summary_reserve" ]; do sleep 1; done
    cat "$work/$name.log" >>"$log" 2>/dev/null
    if [ ! -f "$work/$name.rc" ]; then
        result "$name" timeout-budget "$(($(date +%s) - start))"
        return 1
    fi
    read -r r secs <"$work/$name.rc"
    case $r in 0) status=ok ;; 124 | 137) status=timeout ;; *) status=failed-$r ;; esac
    result "$name" "$status" "$secs"
    [ "$r" = 0 ]
}

# --- 3. benchmarks --------------------------------------------------------------------------------------------------
# bench NAME CHECKPOINT SIZE REPEAT ORDER MAX MIN [--out DIR]
bench() {
    local name=$1 checkpoint=$2 size=$3 repeat=$4 order=$5 max=$6 min=$7 t
    shift 7
    if ! t=$(phase_timeout "$max" "$min") || [ -z "$t" ]; then
        result "$name" skipped-budget 0
        secs=0
        return 1
    fi
    run_logged "$name" "$t" "$work/$name.json" "$python" bench/txt2img.py "$checkpoint" --width "$size" \
        --height "$size" --steps "$steps" --sampler "Euler a" --cfg 7 --seed 1 --repeat "$repeat" --vs-diffusers \
        --order "$order" "$@"
    local brief
    brief=$("$python" - "$work/$name.json" "$results" "$name" 2>>"$log" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
report.pop("notes", None)
with open(sys.argv[2], "a") as f:  # the whole report, one line
    f.write(json.dumps({"phase": sys.argv[3], "report": report}) + "\n")
o, d = report["ours"], report["diffusers"]
print(json.dumps({"it_per_s": [o.get("it_per_s"), d.get("it_per_s")], "ratio_it_per_s": report["ratio"]["it_per_s"],
                  "max_abs_diff": report["images_compared"].get("max_abs_diff"),
                  "cuda_peak_mb": [o.get("cuda_peak_allocated_mb"), d.get("cuda_peak_allocated_mb")],
                  "vae_nan_decodes": [o.get("vae_nan_decodes"), d.get("vae_nan_decodes")]})[1:-1])
PY
)
    result "$name" "$status" "$secs" "$brief"
}

# a second order only when the first one's time fits again, with a margin
second_order_min() { echo $(($1 + $1 / 4 + 10)); }

# one model, both orders: bench_model NAME CHECKPOINT SIZE REPEAT TIMEOUT FIRST_MIN
bench_model() {
    local name=$1 ckpt=$2 size=$3 repeat=$4 limit=$5 first_min=$6
    if ! wait_build "build_$name"; then
        result "${name}_ours_first" skipped-no-checkpoint 0
        return
    fi
    rm -rf "$work/$name-img"
    bench "${name}_ours_first" "$ckpt" "$size" "$repeat" ours-first "$limit" "$first_min" --out "$work/$name-img"
    bench "${name}_diffusers_first" "$ckpt" "$size" "$repeat" diffusers-first "$limit" "$(second_order_min "$secs")"
    cp "$work/$name-img/ours.png" "$out/$name-ours.png" 2>/dev/null
    cp "$work/$name-img/diffusers.png" "$out/$name-diffusers.png" 2>/dev/null
}

bench_model sd15 "$sd15" "$sd15_size" "$sd15_repeat" 150 30
bench_model sdxl "$sdxl" "$sdxl_size" "$sdxl_repeat" 210 45
stop_builds

# --- 4. summary -----------------------------------------------------------------------------------------------------
"$python" - "$results" "$out/summary.json" "$(($(date +%s) - start))" "$failed" <<'PY'
import json, sys
lines = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
phases = {r["phase"]: r for r in lines if "status" in r}
reports = {r["phase"]: r["report"] for r in lines if "report" in r}
tests = phases.get("cuda_tests", {})
summary = {"gpu_check": "summary", "dry_run": phases.get("env", {}).get("dry_run"),
           "gpu": phases.get("env", {}).get("gpu"), "elapsed_s": int(sys.argv[3]),
           "all_phases_ok": sys.argv[4] == "0",
           "cuda_tests": {k: tests.get(k) for k in ("status", "passed", "failed", "errors", "skipped")},
           "phases": {name: r["status"] for name, r in phases.items()}}


def figures(report):
    o, d = report["ours"], report["diffusers"]
    compared = report.get("images_compared", {})
    nan_runs = [e.get("vae_nan_decodes_all_runs", e.get("vae_nan_decodes")) for e in (o, d)]
    return {
        "size": f"{report['settings']['width']}x{report['settings']['height']}", "steps": report["settings"]["steps"],
        "it_per_s_ours": o.get("it_per_s"), "it_per_s_diffusers": d.get("it_per_s"),
        "ratio_it_per_s_ours_over_diffusers": report["ratio"].get("it_per_s"),
        "total_s_ours": o.get("total_s"), "total_s_diffusers": d.get("total_s"),
        "load_s_ours": o.get("load_s"), "load_s_diffusers": d.get("load_s"),
        "max_abs_pixel_diff": compared.get("max_abs_diff"), "psnr_db": compared.get("psnr_db"),
        "nan_check": {"vae_nan_decodes_ours": nan_runs[0], "vae_nan_decodes_diffusers": nan_runs[1],
                      "vae_dtype_after_ours": o.get("vae_dtype_after"),
                      "vae_dtype_after_diffusers": d.get("vae_dtype_after"),
                      "flat_or_black_image": any(e["image"]["uniform"] or e["image"]["all_black"] for e in (o, d))},
        "cuda_peak_allocated_mb_ours": o.get("cuda_peak_allocated_mb"),
        "cuda_peak_allocated_mb_diffusers": d.get("cuda_peak_allocated_mb"),
        "device": o.get("device"),
    }


for model in ("sd15", "sdxl"):
    summary[model] = {order: figures(reports[f"{model}_{order}"]) for order in ("ours_first", "diffusers_first")
                      if f"{model}_{order}" in reports}
with open(sys.argv[2], "w") as f:
    json.dump(summary, f, indent=2)
print(json.dumps(summary, indent=2))
PY
[ -s "$out/summary.json" ] || failed=1
[ "$(grep -c '"phase": "cuda_tests", "status": "ok"' "$results")" = 1 ] || failed=1
echo "gpu_check: $([ "$failed" = 0 ] && echo all phases ok || echo 'some phases failed (see above)') in" \
     "$(($(date +%s) - start))s; results in $out"
exit "$failed"
