#!/usr/bin/env bash
# Install everything the tests need into a test venv, then run them. Extra arguments go to pytest.
#   ./run_tests.sh                 the whole suite but the CUDA tests
#   ./run_tests.sh --fast          all but the browser, launcher, Ray and CUDA tests
#   ./run_tests.sh -k loading -x   a subset
# The CUDA tests (tests/cuda, marker `cuda`) need an NVIDIA GPU and fail without one, so every run here
# deselects them; bench/gpu_check.sh runs them on a GPU machine (`-m cuda` after these arguments selects them).
set -euo pipefail
cd "$(dirname "$0")"

# --fast is ours, not pytest's: it becomes a marker filter (a -m of the caller's, after it, replaces it).
# Without --fast the filter only leaves out the CUDA tests.
fast=0
args=()
for arg in "$@"; do
    if [ "$arg" = "--fast" ]; then
        fast=1
    else
        args+=("$arg")
    fi
done
if [ "$fast" -eq 1 ]; then
    set -- -m "not browser and not launcher and not ray and not cuda" ${args[@]+"${args[@]}"}
else
    set -- -m "not cuda" ${args[@]+"${args[@]}"}
fi

# The browser tests drive Debian's chromium (never a browser Playwright downloads); they must not skip.
# A --fast run has no browser tests, so it does not need it.
if [ "$fast" -eq 0 ] && ! command -v chromium >/dev/null 2>&1; then
    echo "Installing chromium (for the browser tests)"
    if [ "$(id -u)" -eq 0 ]; then
        as_root=env
    elif command -v sudo >/dev/null 2>&1; then
        as_root="sudo env"
    else
        as_root=
    fi
    if [ -z "$as_root" ] || ! { $as_root apt-get update && \
            $as_root DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }; then
        echo "The browser tests need Debian's chromium package and it could not be installed" \
             "(not root, no sudo, or apt-get failed): run 'apt-get install -y chromium' as root." >&2
        exit 1
    fi
    if ! command -v chromium >/dev/null 2>&1; then
        echo "chromium is still not on PATH after installing it; the browser tests cannot run." >&2
        exit 1
    fi
fi

venv=${TEST_VENV:-.venv-test}
python=${python_cmd:-$(command -v python3.11 || command -v python3)}
torch_command=${TORCH_COMMAND:-pip install torch==2.13.0}

if [ ! -x "$venv/bin/python" ]; then
    echo "Creating test venv in $venv"
    "$python" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"

if ! python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
    echo "Installing torch: $torch_command"
    $torch_command
fi
pip install -q -r requirements.txt -r requirements-test.txt -r requirements-ray.txt
pip install -q --no-deps -r requirements-nodeps.txt
pip install -q --no-deps k-diffusion==0.1.1.post1

set +e
# the 25 slowest tests at the end of every run: where to look when the suite nears its 40 minutes
python -m pytest --durations=25 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure, not a pass (check the arguments and tests/;" \
         "the CUDA tests in tests/cuda are deselected unless -m cuda is given)." >&2
    exit 1
fi
exit "$rc"
