"""txt2img benchmark of our engine, optionally against diffusers' StableDiffusion(XL)Pipeline on the same file.

    python bench/txt2img.py CHECKPOINT [--width 512 --height 512 --steps 20 --sampler "Euler a"
                                        --cfg 7 --seed 1 --repeat N] [--vs-diffusers] [--out DIR]

Prints one JSON object to stdout (everything else goes to stderr); bench/README.md explains each
figure. Our engine is driven the way webui.py drives it: paths -> device plan -> ModelManager ->
Engine, `Engine.load_checkpoint`, then `Engine.txt2img(GenerationParams)` through the job queue.
Timings of the U-Net, the VAE decode and the text encoder come from forward hooks / an instance-level
wrapper installed here; no product code is changed.

With --vs-diffusers the same process then frees our model and loads the same file with
`StableDiffusionPipeline.from_single_file(path, config=<local folder>, local_files_only=True)`
(`StableDiffusionXLPipeline` when our loader detects SDXL in the file), with HF_HUB_OFFLINE=1: the config
folder is written from our loaded model's component configs and our tokenizer files, so nothing is
fetched. Its scheduler is EulerAncestralDiscreteScheduler set up as A1111's "Euler a" (timestep_spacing
"linspace", SD's scaled_linear betas 0.00085..0.012, which SDXL shares), and the noise comes from a CPU
generator with the same seed, so both engines should make the same image. For SDXL the empty negative
prompt is passed to diffusers as None (its pipeline zeroes the negative conditioning only then; A1111 and
we zero it for ""), and its time ids are its defaults, which are ours: original = target = the image
size, crop (0, 0).

On an NVIDIA GPU (the device webui.py would pick: CUDA, U-Net and VAE in fp16) both engines run there, the
noise still comes from CPU generators, the per-call times are CUDA-event times and the cuda_* figures give
each phase's peak of torch.cuda.max_memory_allocated; bench/gpu_check.sh runs it so on the device machine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The app's offline switches, before any library reads them: no model hub, no usage statistics.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modules import offline  # noqa: E402

offline.apply()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

_import_start = time.perf_counter()
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from modules import bootstrap, devices, logs, paths  # noqa: E402
from modules.generation.params import GenerationParams  # noqa: E402
from modules.hashing import HashCache  # noqa: E402

IMPORT_S = time.perf_counter() - _import_start

log = logging.getLogger("bench.txt2img")

PROMPT = "a photograph of an astronaut riding a horse"
NEGATIVE_PROMPT = ""
MB = 1024 * 1024


# --- measuring ------------------------------------------------------------------------------------
class RssSampler:
    """Samples this process's resident set size every `interval` s in a thread; `peak` is the highest
    value seen since the last `reset()`. (ru_maxrss is monotonic for the whole process, so it cannot
    tell a later phase's peak from an earlier one's.) `peak_anon` is the same for RSS less its file-backed
    part (psutil's `shared`: RssFile + RssShmem, i.e. mainly a memory-mapped checkpoint's pages, which the
    kernel can drop under memory pressure without swapping): the process's own (anonymous) memory."""

    def __init__(self, interval: float = 0.01):
        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self.peak_anon = 0
        self.phase = "other"  # what the process is doing (set by `phases`); each sample counts in its phase's peak
        self.phase_peaks: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def rss(self) -> int:
        return self.proc.memory_info().rss

    def _sample(self) -> tuple[int, int]:
        m = self.proc.memory_info()
        return m.rss, m.rss - getattr(m, "shared", 0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            value, anon = self._sample()
            with self._lock:
                self.peak = max(self.peak, value)
                self.peak_anon = max(self.peak_anon, anon)
                self.phase_peaks[self.phase] = max(self.phase_peaks.get(self.phase, 0), value)

    def phases(self, unet: torch.nn.Module, text_encoders: list) -> list:
        """Hooks that name the phase: `text` inside the text encoders, `unet` inside U-Net calls, `after_unet`
        from a U-Net call's end (the sampler's own work between steps, and the VAE decode). The handles."""
        def enter(name):
            def hook(*_):
                self.phase = name
            return hook
        handles = [unet.register_forward_pre_hook(enter("unet")), unet.register_forward_hook(enter("after_unet"))]
        handles += [m.register_forward_pre_hook(enter("text")) for m in text_encoders]
        return handles

    def reset(self) -> int:
        value, anon = self._sample()
        with self._lock:
            self.peak, self.peak_anon = value, anon
            self.phase, self.phase_peaks = "other", {}
        return value

    def read_peak(self) -> int:
        value, anon = self._sample()
        with self._lock:
            self.peak = max(self.peak, value)
            self.peak_anon = max(self.peak_anon, anon)
            return self.peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class CallTimer:
    """Time spent inside a module's forward calls, via forward pre/post hooks, plus the span from the first
    call's start to the last call's end (the sampling loop, for the U-Net). On the CPU the stamps are
    wall-clock times. On CUDA they are CUDA events recorded on the current stream, which do not synchronise
    (so timing does not change what is timed: the CPU keeps queueing kernels ahead of the GPU), and are read
    once the work has finished: GPU time from a call's first kernel to its last."""

    def __init__(self, cuda: bool = False):
        self.cuda = cuda
        self.reset()
        self._handles = []

    def reset(self) -> None:
        self.calls = 0
        self._open: list = []  # start stamps of calls in progress
        self._spans: list[tuple] = []  # (start, end) stamps of finished calls
        self._first = self._last = None

    def _stamp(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _seconds(self, start, end) -> float:
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end) / 1000
        return end - start

    def _pre(self, _module, _args):
        stamp = self._stamp()
        self._open.append(stamp)
        if self._first is None:
            self._first = stamp

    def _post(self, _module, _args, _out):
        stamp = self._stamp()
        self._spans.append((self._open.pop(), stamp))
        self.calls += 1
        self._last = stamp

    def attach(self, module: torch.nn.Module) -> "CallTimer":
        self._handles += [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]
        return self

    def wrap_method(self, obj, name: str, inspect=None) -> "CallTimer":
        """Time calls of a method (e.g. AutoencoderKL.decode, which is not `forward`) with an
        instance-level wrapper; `detach()` removes it. `inspect(result)`, if given, looks at each call's
        result after the call's end stamp (so its time is not counted)."""
        original = getattr(obj, name)

        def timed(*args, **kwargs):
            self._pre(None, args)
            try:
                result = original(*args, **kwargs)
            finally:
                self._post(None, args, None)
            if inspect is not None:
                inspect(result)
            return result

        setattr(obj, name, timed)
        self._handles.append(_Restore(obj, name))
        return self

    @property
    def each(self) -> list[float]:
        return [self._seconds(start, end) for start, end in self._spans]

    @property
    def total(self) -> float:
        return sum(self.each)

    @property
    def span(self) -> float:
        if self._first is None or self._last is None:
            return 0.0
        return self._seconds(self._first, self._last)

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class _Restore:
    def __init__(self, obj, name):
        self.obj, self.name = obj, name

    def remove(self):
        with contextlib.suppress(AttributeError):
            delattr(self.obj, self.name)  # drops the instance attribute: the class method shows again


class Timers:
    """The U-Net's, the VAE decode's and the text encoders' CallTimers, and a count of VAE decodes whose output
    had NaNs (ours retries such an fp16 decode in fp32, so a NaN decode shows there as one more decode)."""

    def __init__(self, unet, vae, text_encoders: list, cuda: bool = False):
        self.unet = CallTimer(cuda).attach(unet)
        self.vae = CallTimer(cuda).wrap_method(vae, "decode", inspect=self._vae_output)
        self.text = CallTimer(cuda)
        for text_encoder in text_encoders:  # SDXL: CLIP-L and bigG, one sum
            self.text.attach(text_encoder)
        self.vae_nan_decodes = 0

    def _vae_output(self, out) -> None:
        sample = out.sample if hasattr(out, "sample") else out[0]  # DecoderOutput, or return_dict=False's tuple
        if torch.isnan(sample).any():
            self.vae_nan_decodes += 1

    def reset(self):
        for t in (self.unet, self.vae, self.text):
            t.reset()
        self.vae_nan_decodes = 0

    def detach(self):
        for t in (self.unet, self.vae, self.text):
            t.detach()


def malloc_trim() -> bool:
    """Hand freed heap memory back to the OS (glibc keeps freed blocks below its mmap threshold in
    its arenas, which would count in the next engine's RSS baseline). False where there is no glibc."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    return False


def cpu_use() -> tuple[float, float, int]:
    """This process's user and system CPU seconds so far, and its minor page faults (first touches of new
    memory: most of the system time)."""
    t = psutil.Process().cpu_times()
    return t.user, t.system, resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def cpu_since(start: tuple[float, float, int]) -> tuple[float, float, int]:
    return tuple(b - a for a, b in zip(start, cpu_use()))


class LoadClock:
    """Wall time and this process's user/system CPU time of a load. System time is mostly page faults:
    on this VM, first-touching freshly allocated memory costs ~2 s of system time per GiB."""

    def __enter__(self):
        self._t, self._c = time.perf_counter(), psutil.Process().cpu_times()
        return self

    def __exit__(self, *exc):
        c = psutil.Process().cpu_times()
        self.wall = time.perf_counter() - self._t
        self.user, self.sys = c.user - self._c.user, c.system - self._c.system
        return False

    def figures(self) -> dict:
        return {"load_s": round(self.wall, 3), "load_cpu_user_s": round(self.user, 2),
                "load_cpu_sys_s": round(self.sys, 2)}


def after_unload(rss: "RssSampler", gpu: "GpuMemory") -> dict:
    gc.collect()
    out = {"rss_after_unload_mb": round(rss.rss() / MB, 1)}
    if malloc_trim():
        out["rss_after_unload_trim_mb"] = round(rss.rss() / MB, 1)
    if gpu.cuda:
        torch.cuda.empty_cache()  # what the next engine finds is what the card has, not this engine's cache
        out["cuda_allocated_after_unload_mb"] = round(gpu.allocated() / MB, 1)
    return out


class GpuMemory:
    """Peaks of the memory PyTorch's CUDA allocator handed out (torch.cuda.max_memory_allocated) per phase, as
    RssSampler gives the process's; `sync()` waits for the queued GPU work (before and after a timed span).
    Off CUDA every method is a no-op that returns 0."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.cuda else 0

    def reset(self) -> int:
        """Start a new phase's peak; returns what is allocated now."""
        if not self.cuda:
            return 0
        self.sync()
        torch.cuda.reset_peak_memory_stats(self.device)
        return self.allocated()

    def peak(self) -> int:
        if not self.cuda:
            return 0
        self.sync()
        return torch.cuda.max_memory_allocated(self.device)

    def figures(self, before: int, load_peak: int, loaded: int, generation_peak: int) -> dict:
        if not self.cuda:
            return {}
        return {"cuda_peak_allocated_mb": round(max(load_peak, generation_peak) / MB, 1),
                "cuda_allocated_before_load_mb": round(before / MB, 1),
                "cuda_peak_allocated_load_mb": round(load_peak / MB, 1),
                "cuda_allocated_loaded_mb": round(loaded / MB, 1),
                "cuda_peak_allocated_generation_mb": round(generation_peak / MB, 1),
                "cuda_peak_reserved_mb": round(torch.cuda.max_memory_reserved(self.device) / MB, 1)}


def image_stats(image) -> dict:
    a = np.asarray(image.convert("RGB"), dtype=np.float64)
    return {"size": list(image.size), "mean": round(a.mean(), 2), "std": round(a.std(), 2),
            "min": int(a.min()), "max": int(a.max()), "all_black": bool(a.max() == 0),
            "uniform": bool(a.min() == a.max())}


def compare_images(a, b) -> dict:
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    if x.shape != y.shape:
        return {"comparable": False}
    diff = np.abs(x - y)
    mse = float((diff ** 2).mean())
    return {"psnr_db": round(10 * math.log10(255 ** 2 / mse), 2) if mse > 0 else "inf",
            "max_abs_diff": int(diff.max()), "mean_abs_diff": round(float(diff.mean()), 4),
            "pixels_differing_pct": round(float((diff.max(axis=-1) > 0).mean() * 100), 2)}


def generation_figures(timers: Timers, total: float, steps: int, cpu: tuple[float, float, int]) -> dict:
    unet_s, vae_s, text_s = timers.unet.total, timers.vae.total, timers.text.total
    sampling_s = timers.unet.span
    overhead = total - unet_s - vae_s
    return {
        "steps": steps,
        "s_per_step": round(sampling_s / steps, 4),
        "it_per_s": round(steps / sampling_s, 3) if sampling_s else None,
        "total_s": round(total, 3),
        "unet_s": round(unet_s, 3),
        "unet_calls": timers.unet.calls,
        "unet_s_per_call": round(unet_s / max(1, timers.unet.calls), 4),
        "unet_first_call_s": round(timers.unet.each[0], 4) if timers.unet.calls else None,
        "unet_median_call_s": round(statistics.median(timers.unet.each), 4) if timers.unet.calls else None,
        "sampling_s": round(sampling_s, 3),
        "vae_s": round(vae_s, 3),
        "text_s": round(text_s, 4),
        "text_calls": timers.text.calls,
        "overhead_s": round(overhead, 3),
        "overhead_pct": round(overhead / total * 100, 3),
        "overhead_excl_text_s": round(overhead - text_s, 3),
        "overhead_excl_text_pct": round((overhead - text_s) / total * 100, 3),
        "cpu_util": round((cpu[0] + cpu[1]) / total, 2),
        "cpu_sys_s": round(cpu[1], 2),
        "minor_faults": cpu[2],
        "vae_decodes": timers.vae.calls,
        "vae_nan_decodes": timers.vae_nan_decodes,
    }


def summarise_runs(runs: list[dict]) -> dict:
    """The run with the median total time (the lower middle one for an even count), plus all totals."""
    ordered = sorted(runs, key=lambda r: r["total_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    if len(runs) > 1:
        chosen["runs_total_s"] = [r["total_s"] for r in runs]
        chosen["runs_s_per_step"] = [r["s_per_step"] for r in runs]
        chosen["vae_nan_decodes_all_runs"] = sum(r["vae_nan_decodes"] for r in runs)
        chosen["total_s_min"] = ordered[0]["total_s"]
        chosen["total_s_stdev"] = round(statistics.stdev(r["total_s"] for r in runs), 3)
    return chosen


# --- our engine -----------------------------------------------------------------------------------
def run_ours(args, rss: RssSampler, gpu: GpuMemory, data_dir: Path, plan: devices.DevicePlan,
             context: dict) -> dict:
    p = paths.from_args(str(data_dir))
    paths.ensure_dirs(p)
    checkpoint = args.checkpoint.resolve()
    hashes = HashCache(p.hash_cache)
    engine = bootstrap.build_engine(p, plan, extra_files=(checkpoint,), hashes=hashes,
                                    low_memory="On" if args.low_memory else "Off")
    if args.fp8:
        engine.set_options({"fp8_storage": "Enable"})  # before the load: the model is read with FP8 weights

    # The file's SHA-256 is computed in the background after the load (while the first job samples); it is
    # timed by wrapping this HashCache instance's method. --sync-hash waits for it inside the load, as loads did
    # before the hash moved off the critical path (and as A1111 does on a first load).
    hash_span: list[float] = []
    sha256 = hashes.sha256

    def timed_sha256(path, *a, **kw):
        t = time.perf_counter()
        try:
            return sha256(path, *a, **kw)
        finally:
            hash_span.extend([t, time.perf_counter()])

    hashes.sha256 = timed_sha256

    rss_before, gpu_before = rss.reset(), gpu.reset()
    with LoadClock() as clock:
        model = engine.load_checkpoint(str(checkpoint))
        if args.sync_hash:
            engine.checkpoints.ensure_hash(model.info)
        gpu.sync()
    load_s = clock.wall
    load_end = time.perf_counter()
    load_peak, gpu_load_peak = rss.read_peak(), gpu.peak()
    load_peak_anon = rss.peak_anon
    rss_loaded, gpu_loaded = rss.reset(), gpu.reset()  # from here on the peaks are the generation's
    log.info("ours: loaded in %.2fs (%s, config %s)", load_s, model.config.label, model.config.yaml_path.name)
    hash_figures = {"sync_hash": args.sync_hash, "low_memory": args.low_memory, "fp8": args.fp8,
                    "unet_backend": args.unet_backend}

    params = GenerationParams(prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, seed=args.seed,
                              sampler_name=args.sampler, steps=args.steps, cfg_scale=args.cfg,
                              width=args.width, height=args.height, save_images=False)
    unet = model.unet
    if args.unet_backend != "PyTorch":
        # its one-time cost (the conversion on the first run with this --data-dir, then reading and compiling the
        # converted file) in a one-step job of the same size, reported apart from the timed runs
        engine.set_options({"unet_backend": args.unet_backend})
        t = time.perf_counter()
        prepared = engine.txt2img(params.model_copy(update={"steps": 1}))
        hash_figures["backend_prepare_s"] = round(time.perf_counter() - t, 2)
        hash_figures["backend_notes"] = prepared.warnings
        unet = model.denoising_unet
        rss_loaded = rss.reset()
    sdxl = model.family.name == "sdxl"
    text_models = [model.text.clip_l.text_model, model.text.clip_g.text_model] if sdxl else [model.text.text_model]
    timers = Timers(unet, model.vae, text_models, gpu.cuda)
    phase_hooks = rss.phases(unet, text_models)
    runs, image = [], None
    for i in range(args.repeat):
        timers.reset()
        gpu.sync()
        c, t = cpu_use(), time.perf_counter()
        result = engine.txt2img(params)
        gpu.sync()
        total = time.perf_counter() - t
        runs.append(generation_figures(timers, total, args.steps, cpu_since(c)))
        image = result.images[0]
        log.info("ours: run %d/%d: %.2fs (%.3f s/step)", i + 1, args.repeat, total, runs[-1]["s_per_step"])
    generation_peak, gpu_generation_peak = rss.read_peak(), gpu.peak()
    generation_peak_anon = rss.peak_anon
    phase_peaks = {name: round(value / MB, 1) for name, value in rss.phase_peaks.items()}
    for h in phase_hooks:
        h.remove()
    peak = max(load_peak, generation_peak)
    if hash_span:  # the hash's own wall time, and how much of it was on the load's path
        hash_s = hash_span[-1] - hash_span[0]
        in_load = max(0.0, min(hash_span[-1], load_end) - hash_span[0])
        hash_figures.update({"hash_s": round(hash_s, 3), "load_hash_s": round(in_load, 3),
                             "load_s_excl_hash": round(load_s - in_load, 3),
                             "hash_done_after_load_s": round(max(0.0, hash_span[-1] - load_end), 3),
                             "model_hash_in_infotext": f"Model hash: {model.info.shorthash}" in result.infotexts[0]})
    else:
        hash_figures.update({"hash_s": 0.0, "load_hash_s": 0.0, "load_s_excl_hash": round(load_s, 3)})

    figures = {
        **clock.figures(),
        **hash_figures,
        **summarise_runs(runs),
        "peak_rss_mb": round(peak / MB, 1),
        "rss_before_load_mb": round(rss_before / MB, 1),
        "peak_rss_delta_mb": round((peak - rss_before) / MB, 1),
        "peak_rss_load_mb": round(load_peak / MB, 1),
        "rss_loaded_mb": round(rss_loaded / MB, 1),
        "peak_rss_generation_mb": round(generation_peak / MB, 1),
        "peak_rss_by_phase_mb": phase_peaks,
        "peak_rss_anon_mb": round(max(load_peak_anon, generation_peak_anon) / MB, 1),
        "peak_rss_anon_load_mb": round(load_peak_anon / MB, 1),
        "peak_rss_anon_generation_mb": round(generation_peak_anon / MB, 1),
        "model": model.config.label,
        "family": model.family.name,
        "config": f"{model.config.yaml_path.name} ({model.config.source})",
        **gpu.figures(gpu_before, gpu_load_peak, gpu_loaded, gpu_generation_peak),
        "device": plan.describe,
        # the VAE's dtype after the runs: float32 where an fp16 decode gave NaNs and was retried (vae_nan_decodes)
        "vae_dtype_after": str(model.vae.dtype).removeprefix("torch."),
        "unet_dtype": str(model.unet.dtype).removeprefix("torch."),
        "attention": model.attention,
        "infotext": result.infotexts[0],
        "image": image_stats(image),
    }
    if model.parked_text is not None:  # low-memory mode: the text encoders' parked weights (models/low_memory.py)
        parked = model.parked_text
        figures.update({"parked_text_mb": round(parked.nbytes / MB, 1), "park_write_s": round(parked.write_seconds, 3),
                        "park_read_s_last": round(parked.read_seconds, 3)})

    context["ours_image"] = image
    timers.detach()
    engine.checkpoints.unload()
    engine.queue.stop()
    del model, engine, timers, result, text_models
    figures.update(after_unload(rss, gpu))
    return figures


# --- diffusers ------------------------------------------------------------------------------------
def euler_a_scheduler():
    """EulerAncestralDiscreteScheduler as A1111's "Euler a": t = 999 -> 0 evenly spaced ("linspace"),
    not the SD 1.5 repo's "leading" spacing (timesteps 951, 901, ...). steps_offset is used only by
    "leading"; it is 1 here because StableDiffusionPipeline rewrites any other value to 1 with a warning."""
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                           beta_schedule="scaled_linear", prediction_type="epsilon",
                                           timestep_spacing="linspace", steps_offset=1)


def write_diffusers_config(folder: Path, checkpoint: Path, default_sd1_config: Path) -> tuple[Path, str]:
    """A local diffusers pipeline folder with configs only (no weights), so from_single_file needs
    nothing from a hub; returns it and the family our loader detects for the file ("sd1", "sdxl", ...).
    The component configs are those our loader derives for this file (its family detection, the LDM YAML
    and diffusers' converters; the modules are built on the meta device over the memory-mapped fp16
    tensors, so nothing is converted or copied), the tokenizer is ours. For SDXL the folder also holds
    text_encoder_2 (bigG) and tokenizer_2: our tokenizer padding with "!" (id 0), as OpenCLIP and our
    encoder's bigG side pad, where CLIP-L pads with the end token."""
    import diffusers
    from transformers import CLIPTokenizer

    from modules.models import checkpoint_file, families, loader

    sd = checkpoint_file.read_state_dict(checkpoint)
    config = families.detect(checkpoint, sd, checkpoint_file.read_metadata(checkpoint), default_sd1_config)
    family = config.family.name
    built = loader.build(checkpoint, sd, config)
    built.unet.save_config(folder / "unet")
    built.vae.save_config(folder / "vae")
    if family == "sdxl":
        built.text_encoder.clip_l.config.save_pretrained(folder / "text_encoder")
        built.text_encoder.clip_g.config.save_pretrained(folder / "text_encoder_2")
    else:
        built.text_encoder.config.save_pretrained(folder / "text_encoder")
    del built, sd
    tokenizer = CLIPTokenizer.from_pretrained(str(paths.TOKENIZER_DIR), local_files_only=True)
    tokenizer.save_pretrained(folder / "tokenizer")
    euler_a_scheduler().save_config(folder / "scheduler")
    index = {
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if family == "sdxl":
        bigg_tokenizer = CLIPTokenizer.from_pretrained(str(paths.TOKENIZER_DIR), local_files_only=True, pad_token="!")
        if bigg_tokenizer.pad_token_id != 0:
            raise RuntimeError(f"tokenizer_2 pads with id {bigg_tokenizer.pad_token_id}, bigG pads with 0")
        bigg_tokenizer.save_pretrained(folder / "tokenizer_2")
        index.update({"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
                      "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                      "tokenizer_2": ["transformers", "CLIPTokenizer"]})
    else:
        index.update({"_class_name": "StableDiffusionPipeline", "safety_checker": [None, None],
                      "requires_safety_checker": False})
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return folder, family


def run_diffusers(args, rss: RssSampler, gpu: GpuMemory, plan: devices.DevicePlan, context: dict) -> dict:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    sdxl = context["family"] == "sdxl"
    rss_before, gpu_before = rss.reset(), gpu.reset()
    with LoadClock() as clock:
        if sdxl:
            # no invisible watermark: ours does not add one (neither does A1111)
            pipe = StableDiffusionXLPipeline.from_single_file(
                str(args.checkpoint), config=str(context["config_dir"]), local_files_only=True,
                torch_dtype=plan.unet_dtype, add_watermarker=False)
        else:
            pipe = StableDiffusionPipeline.from_single_file(
                str(args.checkpoint), config=str(context["config_dir"]), local_files_only=True,
                torch_dtype=plan.unet_dtype, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)
        pipe.vae.to(plan.vae_dtype)
        pipe.to(plan.device)
        gpu.sync()
    load_s = clock.wall
    load_peak, gpu_load_peak = rss.read_peak(), gpu.peak()
    load_peak_anon = rss.peak_anon
    rss_loaded, gpu_loaded = rss.reset(), gpu.reset()  # from here on the peaks are the generation's
    pipe.set_progress_bar_config(disable=True)
    sched = pipe.scheduler.config
    if type(pipe.scheduler).__name__ != "EulerAncestralDiscreteScheduler" or sched.timestep_spacing != "linspace":
        raise RuntimeError(f"unexpected scheduler {type(pipe.scheduler).__name__} {dict(sched)}")
    log.info("diffusers: loaded in %.2fs", load_s)

    timers = Timers(pipe.unet, pipe.vae, [pipe.text_encoder, pipe.text_encoder_2] if sdxl else [pipe.text_encoder],
                    gpu.cuda)
    # SDXL: A1111 (and we) zero the negative conditioning for an empty negative prompt; diffusers' SDXL
    # pipeline does that (force_zeros_for_empty_prompt) only for negative_prompt=None, not for "". Its
    # time ids default to ours: original = target = (height, width), crop (0, 0).
    negative_prompt = None if sdxl and NEGATIVE_PROMPT == "" else NEGATIVE_PROMPT
    runs, image = [], None
    for i in range(args.repeat):
        timers.reset()
        generator = torch.Generator("cpu").manual_seed(args.seed)  # CPU noise, moved to the device, as ours
        gpu.sync()
        c, t = cpu_use(), time.perf_counter()
        out = pipe(PROMPT, negative_prompt=negative_prompt, height=args.height, width=args.width,
                   num_inference_steps=args.steps, guidance_scale=args.cfg, generator=generator, output_type="pil")
        gpu.sync()
        total = time.perf_counter() - t
        runs.append(generation_figures(timers, total, args.steps, cpu_since(c)))
        image = out.images[0]
        log.info("diffusers: run %d/%d: %.2fs (%.3f s/step)", i + 1, args.repeat, total, runs[-1]["s_per_step"])
    generation_peak, gpu_generation_peak = rss.read_peak(), gpu.peak()
    generation_peak_anon = rss.peak_anon
    peak = max(load_peak, generation_peak)
    figures = {
        **clock.figures(),
        **summarise_runs(runs),
        "peak_rss_mb": round(peak / MB, 1),
        "rss_before_load_mb": round(rss_before / MB, 1),
        "peak_rss_delta_mb": round((peak - rss_before) / MB, 1),
        "peak_rss_load_mb": round(load_peak / MB, 1),
        "rss_loaded_mb": round(rss_loaded / MB, 1),
        "peak_rss_generation_mb": round(generation_peak / MB, 1),
        "peak_rss_anon_mb": round(max(load_peak_anon, generation_peak_anon) / MB, 1),
        "peak_rss_anon_load_mb": round(load_peak_anon / MB, 1),
        "peak_rss_anon_generation_mb": round(generation_peak_anon / MB, 1),
        **gpu.figures(gpu_before, gpu_load_peak, gpu_loaded, gpu_generation_peak),
        "pipeline": type(pipe).__name__,
        "unet_dtype": str(pipe.unet.dtype).removeprefix("torch."),
        # its SDXL pipeline decodes in fp32 when the VAE's config says force_upcast (SDXL's VAE does)
        "vae_dtype_after": str(pipe.vae.dtype).removeprefix("torch."),
        "vae_force_upcast": bool(getattr(pipe.vae.config, "force_upcast", False)),
        "negative_prompt_passed": negative_prompt,
        "scheduler": {k: sched[k] for k in ("timestep_spacing", "steps_offset", "beta_schedule", "beta_start",
                                            "beta_end", "prediction_type")},
        "image": image_stats(image),
    }
    context["diffusers_image"] = image
    timers.detach()
    del pipe, timers, out
    figures.update(after_unload(rss, gpu))
    return figures


# --- main -----------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sampler", default="Euler a",
                    help="an A1111 sampler name for our engine (diffusers always runs Euler a)")
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="generations per engine; the median one is reported")
    ap.add_argument("--vs-diffusers", action="store_true",
                    help="also run diffusers' StableDiffusionPipeline (StableDiffusionXLPipeline for an SDXL file)")
    ap.add_argument("--diffusers-only", action="store_true",
                    help="run diffusers' pipeline alone (with glibc's defaults, as a script of its own would): for "
                         "runs that alternate with our engine's, one process each, to even out the machine's drift")
    ap.add_argument("--use-cpu", nargs="*", default=[], metavar="WHAT",
                    help="as webui.py's --use-cpu (e.g. 'all'); default: the device webui.py would pick")
    ap.add_argument("--order", choices=["ours-first", "diffusers-first"], default="ours-first",
                    help="which engine runs first with --vs-diffusers (the second one finds memory the "
                         "first one freed, which is cheaper to touch on some VMs; see README)")
    ap.add_argument("--sync-hash", action="store_true",
                    help="wait for the checkpoint's SHA-256 inside the load (the old behaviour) instead of in the "
                         "background")
    ap.add_argument("--low-memory", action="store_true",
                    help="our engine in low-memory mode (as --medvram / --lowram: weights stored in 16 bits)")
    ap.add_argument("--fp8", action="store_true",
                    help="our engine with FP8 weights (setting fp8_storage Enable: the U-Net's and the text encoders' "
                         "convolutions and linear layers in float8_e4m3fn)")
    ap.add_argument("--unet-backend", choices=["PyTorch", "PyTorch bf16", "OpenVINO", "OpenVINO bf16"],
                    default="PyTorch",
                    help="our engine's U-Net backend setting (OpenVINO: converted on the first run with a --data-dir, "
                         "its cost reported as backend_prepare_s)")
    ap.add_argument("--glibc-defaults", action="store_true",
                    help="leave glibc's allocator as it is (devices.keep_freed_memory not applied)")
    ap.add_argument("--data-dir", type=Path, help="our engine's data folder (default: a new temporary one); the "
                                                 "OpenVINO conversion is kept there between runs")
    ap.add_argument("--out", type=Path, help="folder to save ours.png (and diffusers.png) into")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if args.diffusers_only:
        args.vs_diffusers = True
    if args.vs_diffusers and args.sampler.strip().lower() not in ("euler a", "k_euler_a", "k_euler_ancestral"):
        ap.error("--vs-diffusers compares Euler a only")
    if not args.checkpoint.is_file():
        ap.error(f"{args.checkpoint} does not exist")
    return args


def main(argv=None) -> None:
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # anything a library prints must not mix with the JSON
    args = parse_args(argv)
    logs.setup()
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = os.getloadavg()

    # Read the file once so both engines load it from the page cache ("warm"), whatever ran before.
    t = time.perf_counter()
    with open(args.checkpoint, "rb") as f:
        while f.read(64 * MB):
            pass
    prewarm_s = time.perf_counter() - t

    plan = devices.plan(args.use_cpu, skip_cuda_test=True)
    # As the app's start-up does, except glibc's allocator switch (devices.keep_freed_memory): it is process-wide and
    # cannot be undone, so it is made just before our engine runs. In the order diffusers-first, diffusers has
    # glibc's defaults, as a script of its own would; ours-first, it runs with the switch too (each engine's
    # `allocator` says which).
    devices.configure_torch(plan.device, keep_memory=False)
    log.info("Device: %s", plan.describe)
    context: dict = {}
    if args.vs_diffusers:
        context["config_dir"], context["family"] = write_diffusers_config(
            Path(tempfile.mkdtemp(prefix="bench-sd-config-")), args.checkpoint.resolve(),
            paths.from_args().default_sd1_config)
        malloc_trim()
    engines = ["ours", "diffusers"] if args.vs_diffusers else ["ours"]
    if args.order == "diffusers-first":
        engines.reverse()
    if args.diffusers_only:
        engines = ["diffusers"]

    rss = RssSampler()
    gpu = GpuMemory(plan.device)
    data_dir = args.data_dir.resolve() if args.data_dir else Path(tempfile.mkdtemp(prefix="bench-data-"))
    result = {}
    allocator = "glibc defaults"
    try:
        for name in engines:
            if name == "ours":
                if plan.device.type == "cpu" and not args.glibc_defaults and devices.keep_freed_memory():
                    allocator = "freed memory kept (devices.keep_freed_memory)"
                result["ours"] = run_ours(args, rss, gpu, data_dir, plan, context)
            else:
                result["diffusers"] = run_diffusers(args, rss, gpu, plan, context)
            result[name]["allocator"] = allocator
            # on stderr at once: a run the kernel kills later (out of memory) keeps this engine's figures
            log.info("%s figures: %s", name, json.dumps(result[name]))
    finally:
        if not args.data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
        if "config_dir" in context:
            shutil.rmtree(context["config_dir"], ignore_errors=True)
        rss.stop()
    ours = result.get("ours")

    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        if "ours_image" in context:
            context["ours_image"].save(args.out / "ours.png")
        if "diffusers_image" in context:
            context["diffusers_image"].save(args.out / "diffusers.png")

    import diffusers
    import transformers

    report = {
        "benchmark": "txt2img",
        "date": started.isoformat(timespec="seconds"),
        "checkpoint": str(args.checkpoint),
        "checkpoint_gb": round(args.checkpoint.stat().st_size / 1e9, 3),
        "settings": {"prompt": PROMPT, "negative_prompt": NEGATIVE_PROMPT, "width": args.width,
                     "height": args.height, "steps": args.steps, "sampler": args.sampler, "cfg_scale": args.cfg,
                     "seed": args.seed, "rng": "CPU", "repeat": args.repeat,
                     "order": " then ".join(engines)},
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "cpu": _cpu_name(), "platform": platform.platform(),
                    "loadavg_start": [round(x, 2) for x in load_start],
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                    **gpu_info(plan.device)},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                     "diffusers": diffusers.__version__, "transformers": transformers.__version__},
        "import_s": round(IMPORT_S, 2),
        "prewarm_read_s": round(prewarm_s, 2),
        **({"ours": ours} if ours else {}),
        **({"diffusers": result["diffusers"]} if "diffusers" in result else {}),
    }
    if ours and "diffusers" in result:
        d = result["diffusers"]
        report["ratio"] = {k: round(ours[k] / d[k], 3) if d.get(k) and ours.get(k) is not None else None
                           for k in ("load_s", "s_per_step", "it_per_s", "total_s", "unet_s_per_call",
                                     "unet_median_call_s", "peak_rss_mb", "peak_rss_delta_mb",
                                     "cuda_peak_allocated_mb")}
        report["ratio"]["load_s_excl_hash"] = round(ours["load_s_excl_hash"] / d["load_s"], 3)
        report["images_compared"] = compare_images(context["ours_image"], context["diffusers_image"])
    report["peak_rss_process_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    report["notes"] = NOTES
    real_stdout.write(json.dumps(report, indent=2) + "\n")
    real_stdout.flush()


def gpu_info(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    props = torch.cuda.get_device_properties(device)
    return {"gpu": props.name, "gpu_memory_mb": round(props.total_memory / MB), "gpu_capability":
            f"{props.major}.{props.minor}", "gpu_multiprocessors": props.multi_processor_count,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


NOTES = [
    "Timings are wall-clock seconds in one process; other processes may share the CPU (see machine.loadavg_* "
    "and each engine's cpu_util = process CPU seconds / wall seconds during generation; the ideal is "
    "machine.torch_threads). Both engines call the same diffusers U-Net class with the same shapes, so a "
    "difference in unet_s_per_call is CPU contention, not the engine; the engine's own cost is overhead_s.",
    "load_s: checkpoint read + build + placement, with load_cpu_user_s / load_cpu_sys_s of this process. Ours "
    "goes through Engine.load_checkpoint; the file's SHA-256 runs in the background after it (hash_s: its "
    "wall time; hash_done_after_load_s: when it finished, counted from the load's end; the first job's infotext "
    "waits for it only if sampling ends first). With --sync-hash the load waits for it (load_hash_s, the old "
    "behaviour and A1111's first load); load_s_excl_hash leaves it out. Diffusers' load_s is from_single_file with a "
    "local config folder, plus .to(device). The file is read once beforehand, so both load from the page "
    "cache. Most of a CPU load is fp16->fp32 conversion into new memory (SD 1.5: 4.3 GB, SDXL: 13.9 GB); "
    "first-touching new memory costs system time (page faults) that depends on what the VM did before, and "
    "the second engine reuses pages the first one freed (settings.order says which ran first).",
    "total_s: one generation (text encoding, sampling, VAE decode, conversion to a PIL image), excluding load. "
    "s_per_step: sampling_s / steps, where sampling_s runs from the first U-Net call's start to the last one's "
    "end (so it includes the sampler's own work between calls). unet_s, vae_s (AutoencoderKL.decode), text_s: "
    "sums of those calls. overhead_s = total_s - unet_s - vae_s (so it includes text_s; "
    "overhead_excl_text_s does not).",
    "peak_rss_mb: the highest resident set size of the whole process, sampled every 10 ms, from the start of "
    "that engine's load to the end of its last generation; it includes what the process held before "
    "(imports: rss_before_load_mb) and memory-mapped checkpoint pages once touched. peak_rss_delta_mb = "
    "peak - rss_before_load_mb. After each engine is freed, glibc's malloc_trim(0) hands freed heap back to "
    "the OS (rss_after_unload_mb / rss_after_unload_trim_mb: what it left behind before / after), so the "
    "second engine starts from about the import-only baseline. peak_rss_process_mb is ru_maxrss for the run.",
    "devices.configure_torch runs first, as in webui.py (on the CPU: torch.set_flush_denormal(True)); that "
    "switch is process-wide, so diffusers runs with it too. Its other CPU switch, glibc's allocator keeping freed "
    "memory (devices.keep_freed_memory), is made just before our engine runs (it cannot be undone): diffusers "
    "has glibc's defaults when it runs first and the switch when it runs second (each engine's `allocator`). "
    "--glibc-defaults leaves it off for ours too. cpu_sys_s and minor_faults (generation) show its effect: "
    "first-touching fresh memory costs system time.",
    "SDXL (diffusers.pipeline StableDiffusionXLPipeline): diffusers gets negative_prompt=None for the empty "
    "negative prompt (diffusers.negative_prompt_passed), because its pipeline zeroes the negative conditioning "
    "only for None while A1111 and we zero it for an empty one; time ids are original = target = the image "
    "size, crop (0, 0) in both. text_s sums both text encoders (CLIP-L and bigG).",
    "On CUDA: unet_s, vae_s, text_s and sampling_s (so s_per_step and it_per_s = steps / sampling_s) are GPU "
    "times between CUDA events recorded, without synchronising, at each call's start and end; load_s and total_s "
    "are wall times with torch.cuda.synchronize() before and after. cuda_peak_allocated_*_mb: "
    "torch.cuda.max_memory_allocated over that engine's load and over its generations (tensors only; the "
    "allocator's cache is cuda_peak_reserved_mb); the cache is emptied after each engine. vae_nan_decodes counts "
    "VAE decodes whose output had NaNs: ours retries an fp16 one in fp32 (vae_dtype_after then float32), "
    "diffusers' SD 1.5 pipeline does not; its SDXL pipeline decodes in fp32 when vae_force_upcast.",
    "images_compared: ours vs diffusers pixels. A1111 (and we) truncate 255*x to uint8 while diffusers rounds, "
    "so up to 1/255 differences in about half the pixels are expected; the schedules also differ by <=1.7e-5 "
    "relative between integer timesteps (log-sigma vs sigma interpolation).",
]


if __name__ == "__main__":
    main()
