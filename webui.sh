#!/usr/bin/env bash
# Start the web UI on Linux or macOS.
#   first run: makes a venv beside these files, installs torch for this platform and requirements.txt
#   later runs: reuses the venv and starts in seconds
# Settings (python, venv folder, COMMANDLINE_ARGS, TORCH_COMMAND) live in webui-user.sh.
# Arguments given here are passed on to the server, e.g. ./webui.sh --api --listen

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"

if [[ -f "$script_dir/webui-user.sh" ]]; then
    # shellcheck source=webui-user.sh
    source "$script_dir/webui-user.sh"
fi

install_dir=${install_dir:-"$script_dir"}
venv_dir=${venv_dir:-venv}
LAUNCH_SCRIPT=${LAUNCH_SCRIPT:-launch.py}
if [[ -z "${python_cmd:-}" ]]; then
    for candidate in python3.11 python3.12 python3.10 python3; do
        if command -v "$candidate" >/dev/null 2>&1; then python_cmd=$candidate; break; fi
    done
fi

# A1111's "-f" (allow running as root) is accepted and dropped: root only gets a warning here.
if [[ "${1:-}" == "-f" ]]; then shift; fi

delimiter="################################################################"
fail() {
    printf "\n%s\n\e[1m\e[31mERROR: %s\e[0m\n%s\n" "$delimiter" "$1" "$delimiter" >&2
    exit 1
}

if [[ $(id -u) -eq 0 ]]; then
    printf "\e[1m\e[33mWarning:\e[0m running as root. That is fine in a container or CI; on a desktop, "
    printf "prefer a normal user so the web UI cannot change system files.\n"
fi

cd "$install_dir" || fail "cannot enter install_dir '$install_dir' (set in webui-user.sh)"

if [[ -z "${python_cmd:-}" ]] || ! command -v "$python_cmd" >/dev/null 2>&1; then
    fail "Python 3.10 or newer was not found (tried: ${python_cmd:-python3.11 python3.12 python3.10 python3}). Install Python 3.11, or set python_cmd in webui-user.sh."
fi

if [[ "$(uname -s)" == "Darwin" ]]; then
    # Let operators that MPS lacks fall back to the CPU instead of failing.
    export PYTORCH_ENABLE_MPS_FALLBACK=${PYTORCH_ENABLE_MPS_FALLBACK:-1}
fi

if [[ "$venv_dir" == "-" ]]; then
    python_bin=$python_cmd
    echo "venv_dir is '-': using $python_bin without a venv"
else
    if [[ ! -x "$venv_dir/bin/python" ]]; then
        echo "Creating venv in $venv_dir with $python_cmd"
        if ! "$python_cmd" -m venv "$venv_dir"; then
            rm -rf -- "$venv_dir"
            fail "could not create a venv with $python_cmd. On Debian/Ubuntu install the venv module: sudo apt install python3-venv (or python3.11-venv)."
        fi
    fi
    # shellcheck disable=SC1091
    source "$venv_dir/bin/activate" || fail "cannot activate the venv in $venv_dir; delete that folder and start again"
    python_bin=python
fi

exec "$python_bin" "$LAUNCH_SCRIPT" "$@"
