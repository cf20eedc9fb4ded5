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
from modules.services.checkpoints import CheckpointService
from modules.services.extras import ExtrasService
from modules.services.generation import GenerationService
from modules.services.history import HistoryService
from modules.services.scripts.service import ScriptService
from modules.services.merger import MergeService
from modules.services.networks import NetworksService
from modules.services.options import OptionsService
from modules.services.previews import PreviewService
from modules.services.output import OutputWriter
from modules.services.paste import InfotextReader
from modules.services.requests import RequestResolver
from modules.settings import SettingsStore


def build_engine(p: paths.Paths, plan: devices.DevicePlan, *, limits: Limits | None = None,
                 folders: FolderPolicy | None = None, extra_files: tuple[Path, ...] = (),
                 builtin_files: tuple[Path, ...] = (), hashes: HashCache | None = None,
                 low_memory: str = "Off") -> Engine:
    """An engine over the data folder `p` on the device `plan`, with its own queue (stop it when done).
    `extra_files`: checkpoints outside the folders (--ckpt); `builtin_files`: the built-in model; `low_memory`:
    the low-memory mode the flags ask for (see low_memory_flag)."""
    limits = limits or Limits()
    hashes = hashes or HashCache(p.hash_cache)
    checkpoint_files = CheckpointRegistry(p.checkpoint_dirs, hashes, extra_files=extra_files,
                                          builtin_files=builtin_files)
    loras = LoraRegistry(p.lora_dirs, hashes)
    embeddings = EmbeddingRegistry(p.embeddings_dirs, hashes)
    hypernetworks = HypernetworkRegistry(p.hypernetwork_dirs, hashes)
    models = ModelManager(checkpoint_files, VaeRegistry(p.vae_dirs, p.checkpoint_dirs), plan, p.default_sd1_config,
                          loras=loras, embeddings=embeddings, taesd_models=TaesdModels(p.taesd_dir),
                          hypernetworks=hypernetworks, openvino_models=OpenVinoModels(p.openvino_cache),
                          midas_dir=p.models / "midas")
    store = SettingsStore(p.config_file)
    queue = JobQueue()
    queue.on_stop(checkpoint_files.hasher.stop)  # no hashing thread outlives the engine
    folders = folders or FolderPolicy(p.data)
    decode_budget = images.DecodeBudget(limits.decode_budget_pixels)
    checkpoints = CheckpointService(store, models, queue, str(p.checkpoint_dirs[-1]), low_memory)
    options = OptionsService(store, checkpoints, folders)
    style_store = styles.StyleStore(p.styles_files)
    requests = RequestResolver(limits, style_store, options, checkpoints)
    history = HistoryService(HistoryIndex(p.history_db), p, options, limits.max_input_pixels)
    queue.on_stop(history.stop)  # nor any history rescan
    output = OutputWriter(p, history)
    networks = NetworksService(loras, embeddings, hypernetworks)
    generation = GenerationService(requests, checkpoints, models, queue, output, decode_budget)
    return Engine(
        paths=p, limits=limits, folders=folders, device=plan, tokenizer=models.tokenizer, queue=queue,
        checkpoints=checkpoints, options=options, styles=style_store, networks=networks,
        paste=InfotextReader(networks, checkpoints, options),
        requests=requests, generation=generation,
        postprocess=ExtrasService(requests, options, queue, output, decode_budget),
        merger=MergeService(checkpoints, queue, p.checkpoint_dirs[0]), previews=PreviewService(checkpoints, options),
        decode_budget=decode_budget, history=history,
        scripts=ScriptService(generation, requests, checkpoints, options, style_store, queue, output))


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
                        args.embeddings_dir, args.styles_file, args.hypernetwork_dir)
    paths.ensure_dirs(p)
    plan = devices.plan(args.use_cpu, args.device_id, args.no_half, args.no_half_vae, args.precision,
                        args.skip_torch_cuda_test)
    ckpt = ckpt_file(args)
    folders = FolderPolicy(p.data, parse_allowed(args.allowed_paths), server_folders=server_folders)
    return build_engine(p, plan, limits=limits_from_args(args), folders=folders,
                        extra_files=(ckpt,) if ckpt else (),
                        builtin_files=() if args.no_builtin_model else paths.BUILTIN_MODELS,
                        low_memory=low_memory_flag(args))
