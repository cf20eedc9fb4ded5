"""The engine on an NVIDIA GPU with the tiny models (marker `cuda`; fails without CUDA; bench/gpu_check.sh runs it)."""
