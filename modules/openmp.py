"""The OpenMP threads of the thread that calls: handed back before it waits for a job.

PyTorch's CPU operators run their parallel parts on GNU OpenMP (libgomp) here. Every thread that has run one keeps
its own team of helper threads for as long as it lives. When a process holds more of those threads than the
machine has cores, libgomp stops letting them spin between parallel regions: each region then wakes its helpers
from sleep. A job's thread runs thousands of small regions per step, so a second team anywhere in the process
(a thread that built or ran a model before handing work to the queue) made every job after it about twice as slow
(bench/openmp_teams.py, the built-in model at 128x128, 20 steps, 2 cores: 0.744 s an image before another thread
computed, 1.389 s with that thread's team kept, 0.752 s once it was handed back).

`release` hands back the calling thread's team (OpenMP 5's omp_pause_resource for the host device, which libgomp
implements as exactly that); the next parallel region on that thread makes a new one. Where libgomp is not loaded
(another OpenMP runtime, or PyTorch not imported yet) it does nothing.
"""

from __future__ import annotations

import ctypes

_PAUSE_SOFT = 1  # omp_pause_soft
_pause = None


def _functions():
    global _pause
    if _pause is None:
        try:
            process = ctypes.CDLL(None)
            pause, device = process.omp_pause_resource, process.omp_get_initial_device
        except (AttributeError, OSError):
            return None  # not (yet) loaded: looked up again next time
        pause.argtypes, pause.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        device.argtypes, device.restype = [], ctypes.c_int
        _pause = (pause, device)
    return _pause


def release() -> bool:
    """Hand back the calling thread's OpenMP helper threads; True when the runtime did."""
    found = _functions()
    if found is None:
        return False
    pause, device = found
    return pause(_PAUSE_SOFT, device()) == 0
