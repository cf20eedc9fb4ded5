#!/usr/bin/env bash
# Download, here, the wheels bench/gpu_check.sh installs on the device machine (Python 3.12, x86-64 Linux, no
# package index there) into .whl/ at the repository root. Run it from a machine where pip reaches PyPI:
#   echo /.whl/ >> .git/info/exclude     # once: the wheels travel with `carry`, never in git
#   bench/gpu_wheels.sh
# The device image already holds torch, numpy, scipy, pillow, psutil, safetensors, accelerate, pyyaml, tqdm,
# tokenizers, huggingface-hub, filelock, requests, typer and pytest (the device README's KINDS.md). What it lacks,
# at requirements.txt's pins: diffusers, torchsde (+ trampoline), pydantic (+ pydantic-core, annotated-types,
# typing-inspection, and typing-extensions >= 4.16, which pydantic-core needs), and transformers 5.23.0 (the image
# has 5.17; 5.23 checks at import that regex >= 2025.10.22, so regex travels too). gradio, fastapi and uvicorn do
# not: neither the CUDA tests nor the benchmark import them. spandrel and einops: the model upscalers' CUDA test
# (spandrel is installed without dependencies everywhere; see requirements-nodeps.txt). pip downloads each with --no-deps, so every one is
# named here; one version of each, or the install there stops.
#   GPU_WHEELS_NO_TRANSFORMERS=1   leave transformers and regex out (13.6 MB less) and use the image's 5.17
#   PYTHON=python3.11              the pip to run (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
dest=.whl
wheels=(
    diffusers==0.42.1
    torchsde==0.2.6 trampoline==0.1.2
    pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
    typing-extensions==4.16.0
    spandrel==0.4.2 einops==0.8.2
)
if [ "${GPU_WHEELS_NO_TRANSFORMERS:-0}" != 1 ]; then
    wheels+=(transformers==5.23.0 regex==2026.12.2)
fi

if ! git check-ignore -q "$dest/x.whl"; then
    echo "$dest/ is not ignored by git: run 'echo /$dest/ >> .git/info/exclude' first (wheels are carried, not" \
         "committed)." >&2
    exit 1
fi
rm -rf "$dest"
mkdir -p "$dest"
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" "${wheels[@]}"

count=$(find "$dest" -type f -name '*.whl' | wc -l)
if [ "$count" -ne "${#wheels[@]}" ]; then
    echo "expected ${#wheels[@]} wheels in $dest, found $count" >&2
    exit 1
fi
ls -l "$dest"
bytes=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
limit=$((64 * 1024 * 1024))
echo "wheels: $count files, $((bytes / 1024 / 1024)) MiB; tracked tree $((tree / 1024 / 1024)) MiB;" \
     "together $(((bytes + tree) / 1024 / 1024)) of the device's 64 MiB"
if [ $((bytes + tree)) -gt $((limit * 9 / 10)) ]; then
    echo "over 90% of the 64 MiB a device call carries: set GPU_WHEELS_NO_TRANSFORMERS=1 (13.6 MB less)" >&2
    exit 1
fi
