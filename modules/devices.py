"""Device and precision choices: CUDA > MPS > CPU, fp16 where it is safe and fast."""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

MIN_TORCH = (2, 6)


class UnsupportedTorch(RuntimeError):
    pass


OUT_OF_MEMORY_ADVICE = ("Out of memory on the device. Try a smaller size or batch size, or the settings "
                        "cross_attention_optimization 'sub-quadratic' and batch_cond_uncond off")


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA/MPS out-of-memory errors, and the CPU allocator's (a plain RuntimeError)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        words in text for words in ("out of memory", "not enough memory", "can't allocate memory",
                                    "cannot allocate memory"))


def torch_version_tuple(version: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", version)
    if not m:
        raise UnsupportedTorch(f"cannot read the PyTorch version {version!r}")
    return int(m.group(1)), int(m.group(2))


def check_torch_version(version: str | None = None) -> None:
    """Refuse PyTorch older than 2.6: its weights_only loader can be bypassed (CVE-2025-32434),
    and that loader is what keeps .ckpt files from running code."""
    version = version or torch.__version__
    if torch_version_tuple(version) < MIN_TORCH:
        raise UnsupportedTorch(
            f"PyTorch {version} is too old: 2.6 or newer is required, because older versions can be "
            "made to run code from a .ckpt file (CVE-2025-32434). Upgrade torch, e.g. set "
            "TORCH_COMMAND or delete the venv folder and run the launcher again."
        )


@dataclass(frozen=True)
class DevicePlan:
    device: torch.device
    unet_dtype: torch.dtype  # also used for the text encoder
    vae_dtype: torch.dtype

    @property
    def describe(self) -> str:
        name = self.device.type
        if name == "cuda":
            name = f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        short = {torch.float16: "fp16", torch.float32: "fp32", torch.bfloat16: "bf16"}
        return f"{name}, U-Net {short[self.unet_dtype]}, VAE {short[self.vae_dtype]}"


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def plan(use_cpu: list[str] | tuple[str, ...] = (), device_id: str | None = None, no_half: bool = False,
         no_half_vae: bool = False, precision: str = "autocast", skip_cuda_test: bool = False) -> DevicePlan:
    """Pick the device and dtypes from the A1111 flags."""
    force_cpu = any(m in ("all", "sd") for m in use_cpu)
    if not force_cpu and torch.cuda.is_available():
        device = torch.device(f"cuda:{device_id}" if device_id is not None else "cuda")
    elif not force_cpu and _mps_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
        if not force_cpu and not skip_cuda_test:
            log.warning("No usable GPU found: generating on the CPU, which is slow. "
                        "Pass --skip-torch-cuda-test to silence this warning.")

    full = precision == "full" or device.type == "cpu"
    unet_dtype = torch.float32 if (full or no_half) else torch.float16
    # The SD VAE overflows in fp16 on some inputs; on MPS that shows up as black images often
    # enough that we keep it in fp32 there. Elsewhere fp16 is used and a NaN result is retried in fp32.
    vae_half = not (full or no_half or no_half_vae or device.type == "mps")
    vae_dtype = torch.float16 if vae_half else torch.float32
    return DevicePlan(device=device, unet_dtype=unet_dtype, vae_dtype=vae_dtype)


def configure_torch(device: torch.device, keep_memory: bool = True) -> None:
    """Process-wide switches that are free wins. Call it before the threads that generate are started (the
    allocator's switch applies to threads that have not allocated yet). `keep_memory=False` leaves glibc's
    allocator as it is (benchmarks compare with it)."""
    if device.type == "cpu":
        # Denormal floats are very slow on x86 CPUs; flushing them to zero measured 2.5x faster
        # U-Net steps at 256x256 with a bit-identical image.
        torch.set_flush_denormal(True)
        if keep_memory:
            keep_freed_memory()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 in hardware (x86 AVX-512 BF16 or AMX, read from /proc/cpuinfo on Linux;
    elsewhere not known, so False). Without it PyTorch emulates bfloat16, slower than float32."""
    if cpuinfo is None:
        cpuinfo = _cpuinfo()
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.cache
def _cpuinfo() -> str:
    """/proc/cpuinfo, read once (a job asking for bfloat16 checks its flags); "" where there is none."""
    return _read("/proc/cpuinfo") or ""


def empty_cache(device: torch.device) -> None:
    """Give memory the device's allocator keeps for reuse back to the system. On the CPU that is glibc's heap:
    freed blocks under its mmap threshold (which grows to 32 MB as big tensors are freed) stay in its arenas and
    count as the process's memory; malloc_trim returns them (measured: 10.8 GB -> 0.45 GB after an SDXL job).
    Called between phases (a load, sampling, the decode), where a phase's freed memory would otherwise add to
    the next one's peak."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
    elif device.type == "cpu":
        _malloc_trim()


# glibc's mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
KEEP_BLOCKS_UNDER = 32 << 20  # blocks under 32 MiB come from the heap: glibc's own ceiling for its moving threshold
KEEP_FREE_TOP = (1 << 31) - 1  # the heap's free top is kept up to 2 GiB (mallopt takes an int)


def keep_freed_memory() -> bool:
    """glibc: keep freed memory for the next allocation instead of handing it back to the kernel at once.

    glibc's defaults hand much of it back: the heap's free top is trimmed past 128 KB-64 MB, a block over the mmap
    threshold is mapped on its own and unmapped when freed, and that threshold only moves up (to at most 32 MB)
    as such blocks are freed; each thread that allocates gets an arena of 64 MB heaps of its own. A U-Net call
    allocates and frees GBs of activations, so each call paid again for fresh zeroed pages: measured, SD 1.5 at
    512x512 (one call with CFG, on a worker thread as our jobs run) took 9.6-10.7 s with 1.2-2.4 s of it in the
    kernel and 700,000 page faults. With every thread on the main heap, its free top kept up to 2 GiB and the
    threshold fixed at 32 MiB from the start, it took 9.0 s with 150,000-200,000 faults (the larger blocks are
    still mapped one by one: keeping those too saved nothing more there, and with SDXL at 1024x1024 it left the
    heap fragmented: 19092 MiB at the peak against 16208 MiB), with the same pixels (bench/README.md).
    What a phase frees is still handed back between phases and after each job (`empty_cache`: malloc_trim),
    so a phase's peak does not add to the next one's, and an idle server does not keep a job's memory.
    A1111's launcher gets a similar effect by preloading tcmalloc. Returns False where the C library is not
    glibc (macOS, Windows, musl): nothing changes there."""
    libc = _glibc()
    return libc is not None and all([libc.mallopt(_M_ARENA_MAX, 1) == 1,
                                     libc.mallopt(_M_MMAP_THRESHOLD, KEEP_BLOCKS_UNDER) == 1,
                                     libc.mallopt(_M_TRIM_THRESHOLD, KEEP_FREE_TOP) == 1])


LOW_MEMORY_MMAP_THRESHOLD = 4 * 1024 * 1024


def map_large_blocks(threshold: int = LOW_MEMORY_MMAP_THRESHOLD) -> None:
    """glibc: allocate blocks of `threshold` bytes and more with their own mapping, returned to the system when
    freed. By default glibc raises that threshold up to 32 MB as large blocks are freed, and blocks under it are
    carved from its heap, which the low-memory mode's per-layer weight copies (1-60 MB, one per layer and call)
    fragment: measured, SD 1.5 at 512x512 in low-memory mode peaks at 3408 MiB with glibc's default and 3071 MiB
    with 4 MB (bench/README.md). Process-wide and for good: called at each load in that mode (setting it again
    changes nothing)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, threshold)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * threshold)  # and a free heap top over twice that is trimmed


def _malloc_trim() -> None:
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _glibc():
    """glibc, opened once (the allocator's switches and malloc_trim go through it), or None where the C library is
    another (macOS, Windows, musl): they do nothing there."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def free_memory(device: torch.device) -> int | None:
    """Bytes a job on `device` could still allocate, or None where it cannot be told (MPS). CUDA: what the card
    has free plus what PyTorch's cache holds unused. CPU: the RAM the system has available, or what the process's
    control group (a container's memory limit) leaves when that is less; swap not counted (see free_swap)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    import psutil

    available = psutil.virtual_memory().available
    limited = _cgroup_free(_read)
    return available if limited is None else min(available, limited)


def free_swap(device: torch.device) -> int:
    """Swap space free, which a CPU job can spill into (slowly) when RAM is short; 0 for a GPU."""
    if device.type != "cpu":
        return 0
    import psutil

    return psutil.swap_memory().free


def process_memory(device: torch.device) -> int:
    """What this process holds on `device`: its resident set on the CPU, PyTorch's allocations on a GPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    if device.type == "mps":
        return torch.mps.current_allocated_memory()
    import psutil

    return psutil.Process().memory_info().rss


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _cgroup_free(read) -> int | None:
    """The limit of the control group this process runs in minus what it uses (its page cache that can be
    dropped not counted), from cgroup v2's files or v1's; None without a limit."""
    for limit_file, usage_file, stat_file, cache_key in (
            ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat",
             "inactive_file"),
            ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
             "/sys/fs/cgroup/memory/memory.stat", "total_inactive_file")):
        limit, usage = (read(limit_file) or "").strip(), (read(usage_file) or "").strip()
        if not limit.isdigit() or not usage.isdigit():
            continue
        if int(limit) >= 1 << 60:  # v1 writes "no limit" as a huge number
            return None
        match = re.search(rf"^{cache_key} (\d+)", read(stat_file) or "", re.MULTILINE)
        reclaimable = int(match.group(1)) if match else 0
        return max(0, int(limit) - (int(usage) - reclaimable))
    return None
