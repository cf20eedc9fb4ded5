@echo off
rem Settings for webui.bat. Fill in what you need, leave the rest empty, and run this file.

rem Python to make the venv with (default: python on PATH)
set PYTHON=
rem venv folder (default: venv beside these files; - runs without a venv)
set VENV_DIR=
rem Flags for the server, e.g. --api --listen --port 7860
set COMMANDLINE_ARGS=
rem How torch is installed (default: the CUDA build from PyTorch's index when an NVIDIA driver is
rem present, else the CPU build), e.g.
rem set TORCH_COMMAND=pip install torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cu130
set TORCH_COMMAND=

call webui.bat %*
