"""Checkpoint Merger jobs: checkpoint names resolved, the merge run in the queue (so it never competes with a
generation for memory), and the new file listed at once."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from modules import hashing
from modules.jobs import Job, JobQueue
from modules.models import merge
from modules.models.registry import CheckpointInfo
from modules.services.checkpoints import CheckpointService
from modules.services.errors import BadRequest


@dataclass(frozen=True)
class MergeForm:
    """What the tab sends, with A1111's names: checkpoints by title or name, the VAE by its list name."""
    primary_model_name: str
    secondary_model_name: str = ""
    tertiary_model_name: str = ""
    interp_method: str = "Weighted sum"
    multiplier: float = 0.3
    save_as_half: bool = False
    custom_name: str = ""
    checkpoint_format: str = "safetensors"
    config_source: str = "A, B or C"
    bake_in_vae: str = "None"
    discard_weights: str = ""
    save_metadata: bool = True
    add_merge_recipe: bool = True
    copy_metadata_fields: bool = True
    overwrite: bool = False


@dataclass
class MergeResult:
    path: Path
    title: str  # the new checkpoint's name in the list
    kind: str | None
    warnings: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        return f"Checkpoint saved to {self.path}"


class MergeService:
    def __init__(self, checkpoints: CheckpointService, queue: JobQueue, out_dir: Path):
        self._checkpoints = checkpoints
        self._queue = queue
        self._out_dir = Path(out_dir)  # A1111's: --ckpt-dir, else models/Stable-diffusion

    def _info(self, name: str, role: str) -> CheckpointInfo | None:
        if not name or name == "None":
            return None
        info = self._checkpoints.find(name)
        if info is None:
            raise BadRequest(f"Checkpoint Merger: {role} model {name!r} not found; refresh the list or check the name")
        return info

    def _request(self, form: MergeForm) -> tuple[merge.MergeRequest, dict[str, CheckpointInfo]]:
        infos = {"A": self._info(form.primary_model_name, "primary (A)")}
        if infos["A"] is None:
            raise BadRequest("Checkpoint Merger: choose a primary model (A)")
        if form.interp_method != "No interpolation":
            infos["B"] = self._info(form.secondary_model_name, "secondary (B)")
        if form.interp_method == "Add difference":
            infos["C"] = self._info(form.tertiary_model_name, "tertiary (C)")
        vae = None
        if form.bake_in_vae and form.bake_in_vae != "None":
            vae = next((v for v in self._checkpoints.vaes() if v.name == form.bake_in_vae), None)
            if vae is None:
                raise BadRequest(f"Checkpoint Merger: VAE {form.bake_in_vae!r} not found; refresh the VAE list")

        def as_input(info: CheckpointInfo | None) -> merge.MergeInput | None:
            if info is None:
                return None
            return merge.MergeInput(info.filename, info.name, info.model_name)

        request = merge.MergeRequest(
            as_input(infos["A"]), as_input(infos.get("B")), as_input(infos.get("C")), form.interp_method,
            float(form.multiplier), bool(form.save_as_half), form.custom_name or "", form.checkpoint_format,
            form.config_source, vae.filename if vae else None, vae.name if vae else "None", form.discard_weights or "",
            bool(form.save_metadata), bool(form.add_merge_recipe), bool(form.copy_metadata_fields),
            bool(form.overwrite))
        try:
            merge.check(request)
        except merge.MergeError as e:
            raise BadRequest(f"Checkpoint Merger: {e}") from None
        return request, {k: v for k, v in infos.items() if v is not None}

    def submit(self, form: MergeForm) -> Job:
        """Queue a merge; what cannot be merged is refused at once (BadRequest) or, when only the files show it
        (different families, shapes, an existing output), by the job with a BadRequest. The result: MergeResult."""
        request, infos = self._request(form)

        def run(job: Job) -> MergeResult:
            job.state.job_count = 1
            resolved = request
            if request.save_metadata and request.add_merge_recipe:  # the recipe names the inputs by their hashes
                resolved = self._with_hashes(job, request, infos)
            job.state.textinfo = "Merging"
            with tqdm(desc="Merging checkpoints", unit="tensor", disable=None) as bar:
                def progress(done: int, total: int, _key: str) -> None:
                    job.state.sampling_step, job.state.sampling_steps = done, total
                    bar.total = total
                    bar.update(done - bar.n)
                try:
                    outcome = merge.merge(resolved, self._out_dir, progress, job.check)
                except merge.MergeError as e:
                    raise BadRequest(f"Checkpoint Merger: {e}") from None
            self._checkpoints.refresh()
            info = self._checkpoints.find(str(outcome.path.resolve()))
            if info is not None:
                self._checkpoints.hash_later(info)  # its title gains its [hash] when done, as after a load
            return MergeResult(outcome.path, info.name if info else outcome.path.name, outcome.kind, outcome.warnings)

        return self._queue.submit("model-merge", run)

    def _with_hashes(self, job: Job, request: merge.MergeRequest, infos: dict[str, CheckpointInfo]
                     ) -> merge.MergeRequest:
        fields = {"A": "primary", "B": "secondary", "C": "tertiary"}
        changes = {}
        for role, info in infos.items():
            job.state.textinfo = f"Calculating the hash of {info.name}"
            sha256 = self._checkpoints.ensure_hash(info)
            legacy = info.legacy_hash or hashing.legacy_model_hash(info.filename)
            old = getattr(request, fields[role])
            changes[fields[role]] = merge.MergeInput(old.path, old.name, old.model_name, sha256, legacy)
        return replace(request, **changes)
