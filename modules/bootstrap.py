"""Start-up wiring: the one place that builds the engine's parts and connects them. webui.py, the benchmarks
and the tests all build an engine through `build` (from command-line flags) or `build_engine`."""

from __future__ import annotations

import os
from pathlib import Path

from modules import devices, images, paths, styles
from modules.engine import Engine
from modules.folders import FolderPolicy, parse_allowed
from modules.hashing import HashCache
from modules.history import HistoryIndex
from modules.jobs import JobQueue
from modules.limits import Limits
from modules.models.embeddings import EmbeddingRegistry
from modules.models.hypernetwork import HypernetworkRegistry
from modules.models.lora import LoraRegistry
from modules.models.manager import ModelManager
from modules.models.openvino_unet import OpenVinoModels
from modules.models.registry import CheckpointRegistry, VaeRegistry
from modules.models.taesd import TaesdModels
from modules.models.upscalers import UpscalerModels
from modules.services.checkpoints import CheckpointService
from modules.services.cluster import LocalCluster
from modules.services.extras import ExtrasService
from modules.services.generation import GenerationService
from modules.services.history import HistoryService
from modules.services.scripts.service import ScriptService
from modules.services.upscalers import UpscalerService
from modules.services.merger import MergeService
from modules.services.networks import NetworksService
from modules.services.options import OptionsService
from modules.services.previews import PreviewService
from modules.services.output import OutputWriter, RecordingWriter
from modules.services.paste import InfotextReader
from modules.services.requests import RequestResolver
from modules.settings import SettingsStore


def build_engine(p: paths.Paths, plan: devices.DevicePlan, *, limits: Limits | None = None,
                 folders: FolderPolicy | None = None, extra_files: tuple[Path, ...] = (),
                 builtin_files: tuple[Path, ...] = (), hashes: HashCache | None = None,
                 low_memory: str = "Off", queue_workers: int = 1) -> Engine:
    """An engine over the data folder `p` on the device `plan`, with its own queue (stop it when done).
    `extra_files`: checkpoints outside the folders (--ckpt); `builtin_files`: the built-in model; `low_memory`:
    the low-memory mode the flags ask for (see low_memory_flag); `queue_workers`: jobs that may run at once (one per
    cluster replica: see start_cluster)."""
    limits = limits or Limits()
    models = model_manager(p, plan, hashes or HashCache(p.hash_cache), extra_files, builtin_files,
                           limits.memory_limit_bytes)
    checkpoint_files, loras, embeddings, hypernetworks = models.checkpoints, models.loras, models.embeddings, \
        models.hypernetworks
    store = SettingsStore(p.config_file)
    queue = JobQueue(queue_workers)
    queue.on_stop(checkpoint_files.hasher.stop)  # no hashing thread outlives the engine
    folders = folders or FolderPolicy(p.data)
    decode_budget = images.DecodeBudget(limits.decode_budget_pixels)
    checkpoints = CheckpointService(store, models, queue, str(p.checkpoint_dirs[-1]), low_memory)
    options = OptionsService(store, checkpoints, folders)
    style_store = styles.StyleStore(p.styles_files)
    upscalers = UpscalerService(UpscalerModels(p.upscaler_dirs, plan))
    requests = RequestResolver(limits, style_store, options, checkpoints, upscalers)
    history = HistoryService(HistoryIndex(p.history_db), p, options, limits.max_input_pixels)
    queue.on_stop(history.stop)  # nor any history rescan
    output = OutputWriter(p, history)
    networks = NetworksService(loras, embeddings, hypernetworks, checkpoint_files)
    generation = GenerationService(requests, checkpoints, models, queue, output, decode_budget, upscalers)
    return Engine(
        paths=p, limits=limits, folders=folders, device=plan, tokenizer=models.tokenizer, queue=queue,
        checkpoints=checkpoints, options=options, styles=style_store, networks=networks,
        paste=InfotextReader(networks, checkpoints, options, style_store),
        requests=requests, generation=generation,
        postprocess=ExtrasService(requests, options, queue, output, decode_budget, upscalers), upscalers=upscalers,
        merger=MergeService(checkpoints, queue, p.checkpoint_dirs[0]), previews=PreviewService(checkpoints, options),
        decode_budget=decode_budget, history=history,
        scripts=ScriptService(generation, requests, checkpoints, options, style_store, queue, output, decode_budget),
        cluster=LocalCluster(queue, checkpoints, plan.describe))


def model_manager(p: paths.Paths, plan: devices.DevicePlan, hashes: HashCache, extra_files: tuple[Path, ...] = (),
                  builtin_files: tuple[Path, ...] = (), memory_limit: int | None = None) -> ModelManager:
    """The model manager over the folders of `p`, with its registries (checkpoints, VAEs, networks, TAESD);
    `memory_limit`: --memory-limit in bytes."""
    checkpoint_files = CheckpointRegistry(p.checkpoint_dirs, hashes, extra_files=extra_files,
                                          builtin_files=builtin_files)
    return ModelManager(checkpoint_files, VaeRegistry(p.vae_dirs, p.checkpoint_dirs), plan, p.default_sd1_config,
                        loras=LoraRegistry(p.lora_dirs, hashes),
                        embeddings=EmbeddingRegistry(p.embeddings_dirs, hashes), taesd_models=TaesdModels(p.taesd_dir),
                        hypernetworks=HypernetworkRegistry(p.hypernetwork_dirs, hashes),
                        openvino_models=OpenVinoModels(p.openvino_cache), midas_dir=p.models / "midas",
                        park_dir=p.parked_weights, memory_limit=memory_limit)


def build_replica(p: paths.Paths, plan: devices.DevicePlan, limits: Limits, *,
                  extra_files: tuple[Path, ...] = (), builtin_files: tuple[Path, ...] = (), low_memory: str = "Off"
                  ) -> tuple[GenerationService, ModelManager, RecordingWriter]:
    """What a cluster replica (modules/cluster/replica.py) runs jobs with: its own model manager and generation
    service over the front's folders, writing no file (a RecordingWriter: the front writes them) and keeping
    its settings (the checkpoint it selects) in memory, never in the front's config.json."""
    models = model_manager(p, plan, HashCache(p.hash_cache), extra_files, builtin_files, limits.memory_limit_bytes)
    store = SettingsStore(None)
    queue = JobQueue()  # never given a job: the replica runs the front's jobs itself (run_accepted)
    queue.on_stop(models.checkpoints.hasher.stop)
    checkpoints = CheckpointService(store, models, queue, str(p.checkpoint_dirs[-1]), low_memory)
    options = OptionsService(store, checkpoints, FolderPolicy(p.data))
    upscalers = UpscalerService(UpscalerModels(p.upscaler_dirs, plan))
    requests = RequestResolver(limits, styles.StyleStore(p.styles_files), options, checkpoints, upscalers)
    writer = RecordingWriter(p)
    generation = GenerationService(requests, checkpoints, models, queue, writer,
                                   images.DecodeBudget(limits.decode_budget_pixels), upscalers)
    return generation, models, writer


def low_memory_flag(args) -> str:
    """A1111's memory flags as the low-memory mode they ask for: --lowram, --medvram, --lowvram: On;
    --medvram-sdxl: SDXL only."""
    if args.lowram or args.medvram or args.lowvram:
        return "On"
    return "SDXL only" if args.medvram_sdxl else "Off"


def ckpt_file(args) -> str | None:
    """--ckpt's file, links followed (models shared between apps are often symlinks): the registry knows it by
    that path."""
    return os.path.realpath(os.path.expanduser(args.ckpt)) if args.ckpt else None


def build(args, server_folders: bool = True) -> Engine:
    """The engine the flags describe (data and model folders, device, limits), the built-in model included
    unless --no-builtin-model. Clients may name server folders inside the data folder and --allowed-paths, and
    none from the page unless `server_folders`. Nothing is loaded yet: `Engine.checkpoints.start_loading` does
    that."""
    from modules.limits import from_args as limits_from_args

    p = paths.from_args(args.data_dir, args.models_dir, args.ckpt_dir, args.vae_dir, args.config, args.lora_dir,
                        args.embeddings_dir, args.styles_file, args.hypernetwork_dir,
                        {"ESRGAN": args.esrgan_models_path, "RealESRGAN": args.realesrgan_models_path,
                         "DAT": args.dat_models_path})
    paths.ensure_dirs(p)
    plan = devices.plan(args.use_cpu, args.device_id, args.no_half, args.no_half_vae, args.precision,
                        args.skip_torch_cuda_test)
    devices.configure_torch(plan.device)  # before the engine starts its threads (see keep_freed_memory)
    folders = FolderPolicy(p.data, parse_allowed(args.allowed_paths), server_folders=server_folders)
    extra_files, builtin_files = checkpoint_files(args)
    return build_engine(p, plan, limits=limits_from_args(args), folders=folders, extra_files=extra_files,
                        builtin_files=builtin_files, low_memory=low_memory_flag(args),
                        queue_workers=cluster_workers(args))


def checkpoint_files(args) -> tuple[tuple[str, ...], tuple[Path, ...]]:
    """The checkpoints the flags list beside the folders: --ckpt's file, and the built-in model unless
    --no-builtin-model."""
    ckpt = ckpt_file(args)
    return ((ckpt,) if ckpt else ()), (() if args.no_builtin_model else paths.BUILTIN_MODELS)


def cluster_workers(args) -> int:
    """How many generation replicas the flags ask for (0: no cluster, jobs run in this process)."""
    if not (getattr(args, "ray_workers", None) or getattr(args, "ray_address", None)):
        return 0
    return args.ray_workers or 1


def start_cluster(engine: Engine, args) -> None:
    """With --ray-workers / --ray-address: start the Ray replicas (waits until they are up) and send every
    generation job to them; they stop with the engine's queue. Ray is imported only here."""
    from modules.cluster import prepare_environment

    prepare_environment(args.ray_address)
    from modules.cluster.front import RayCluster

    extra_files, builtin_files = checkpoint_files(args)
    cluster = RayCluster.from_args(args, cluster_workers(args), engine.paths, engine.limits, low_memory_flag(args),
                                   extra_files=extra_files, builtin_files=builtin_files)
    cluster.start()
    engine.queue.on_stop(cluster.stop)
    engine.generation.remote = cluster
    engine.checkpoints.loads_here = False
    engine.cluster = cluster
