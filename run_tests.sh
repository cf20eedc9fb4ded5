#!/usr/bin/env bash
# Install everything the tests need into a test venv, then run them. Extra arguments go to pytest.
#   ./run_tests.sh                 the whole suite
#   ./run_tests.sh -k loading -x   a subset
set -euo pipefail
cd "$(dirname "$0")"

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
pip install -q -r requirements.txt -r requirements-test.txt
pip install -q --no-deps k-diffusion==0.1.1.post1

set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure, not a pass (check the arguments and tests/)." >&2
    exit 1
fi
exit "$rc"
