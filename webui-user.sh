#!/usr/bin/env bash
#########################################################
# Settings for webui.sh. Uncomment a line and change it. #
#########################################################

# Folder the web UI lives in (default: the folder of webui.sh)
#install_dir="/home/$(whoami)"

# Flags for the server, e.g. "--api --listen --port 7860 --ckpt-dir /data/models"
#export COMMANDLINE_ARGS=""

# Python to make the venv with (default: the first of python3.11, python3.12, python3.10, python3)
#python_cmd="python3.11"

# venv folder, relative to install_dir ('-' runs without a venv)
#venv_dir="venv"

# How torch is installed (default: pip install torch==2.13.0; a CUDA build on Linux, MPS on macOS).
# For example an AMD GPU with ROCm:
#export TORCH_COMMAND="pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/rocm6.4"

# Requirements file installed after torch
#export REQS_FILE="requirements.txt"

# Script that prepares the environment and starts the server
#LAUNCH_SCRIPT="launch.py"
