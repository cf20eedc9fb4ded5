"""Prompt text to the U-Net's cross-attention input, the way AUTOMATIC1111 does it for CLIP text encoders.

A model family builds the `PromptEncoder` for its text encoder (SD 1.x: OpenAI CLIP, SD 2.x: OpenCLIP);
the prompt syntax it reads is `modules.prompt_syntax`.

A prompt's tokens are cut into chunks of 75. A chunk that fills up while a comma is among its last 20
tokens is cut after that comma instead, and the rest moves to the next chunk; `BREAK` ends a chunk
where it stands. Each chunk becomes BOS + tokens + EOS + padding = 77 ids (SD 1.x pads with EOS;
SD 2.x's OpenCLIP pads with 0), is encoded on its own, and the chunks are joined along the token
axis: a 100-token prompt gives a (154, width) conditioning.

Emphasis weights (see `prompt_syntax.parse_attention`) multiply the encoder's output per token. In the
default "Original" mode the result is then rescaled so that its mean equals the unweighted mean.
As in A1111, all the texts of one prompt's schedule are encoded as one batch: they get the same
number of chunks (short ones padded with empty chunks) and that mean is taken over the whole batch,
each schedule entry counted once (so an alternation that shows a text on 5 steps counts it 5 times).
The text encoder itself runs once per distinct text.

A prompt becomes a `ComposableCond`: its AND sub-prompts, each a `ScheduledCond` (the conditioning to
use at each sampling step) with its guidance weight.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from transformers import CLIPTextModel, CLIPTokenizer

from modules import prompt_syntax
from modules.models.embeddings import Embedding, EmbeddingVocabulary

CHUNK = 75
COMMA_BACKTRACK = 20
BOS, EOS = 49406, 49407
EMPHASIS_MODES = ("None", "Ignore", "Original", "No norm")


@dataclass(frozen=True)
class TextEncoderSpec:
    """How a family's text encoder differs in A1111's encoding: the id that pads a chunk to 77, and
    whether the "Clip skip" setting applies."""
    pad_id: int
    honours_clip_skip: bool


OPENAI_CLIP = TextEncoderSpec(pad_id=EOS, honours_clip_skip=True)  # SD 1.x
OPEN_CLIP = TextEncoderSpec(pad_id=0, honours_clip_skip=False)  # SD 2.x: A1111 applies Clip skip to SD 1.x only


@dataclass
class Chunk:
    """Up to 75 prompt tokens and the emphasis weight of each. A textual-inversion embedding takes one
    slot per vector (id 0 as a placeholder); `embeddings` says where its vectors go: (offset in ids,
    (n, width) vectors)."""
    ids: list[int]
    weights: list[float]
    embeddings: list[tuple[int, torch.Tensor]] = field(default_factory=list)


def build_chunks(segments: list[tuple[list[int | Embedding], float] | None], comma_id: int,
                 backtrack: int = COMMA_BACKTRACK) -> list[Chunk]:
    """Chunks of at most 75 tokens from (token ids, weight) segments; None (BREAK) closes the current
    chunk, even an empty one. A full chunk whose last comma is within `backtrack` tokens of its end is cut
    after that comma and the tail moves on (A1111's `comma_padding_backtrack`, 20; 0: never). An Embedding
    among the ids takes as many slots as it has vectors, all in one chunk (a new one if they do not fit)."""
    chunks: list[Chunk] = []
    current = Chunk([], [])
    last_comma = -1

    def close() -> None:
        nonlocal current, last_comma
        chunks.append(current)
        current = Chunk([], [])
        last_comma = -1

    for segment in segments:
        if segment is None:
            close()
            continue
        ids, weight = segment
        for tok in ids:
            if tok == comma_id:
                last_comma = len(current.ids)
            elif len(current.ids) == CHUNK and last_comma != -1 and len(current.ids) - last_comma <= backtrack:
                cut = last_comma + 1
                tail = Chunk(current.ids[cut:], current.weights[cut:],
                             [(at - cut, v) for at, v in current.embeddings if at >= cut])
                current.ids, current.weights = current.ids[:cut], current.weights[:cut]
                current.embeddings = [(at, v) for at, v in current.embeddings if at < cut]
                close()
                current = tail
            if len(current.ids) == CHUNK:
                close()
            if isinstance(tok, Embedding):
                vectors = tok.vectors[:CHUNK]
                if len(current.ids) + len(vectors) > CHUNK:
                    close()
                current.embeddings.append((len(current.ids), vectors))
                current.ids.extend([0] * len(vectors))
                current.weights.extend([weight] * len(vectors))
                continue
            current.ids.append(tok)
            current.weights.append(weight)
    if current.ids or not chunks:
        chunks.append(current)
    return chunks


def chunk_tokens(tokens: list[int], comma_id: int) -> list[list[int]]:
    """The chunking of plain token ids (no weights, no BREAK)."""
    return [c.ids for c in build_chunks([(tokens, 1.0)], comma_id)]


@dataclass(frozen=True)
class Cond:
    """What one prompt text gives the U-Net: the cross-attention context (tokens, width) and, for U-Nets
    that also take a pooled text vector (SDXL's `text_embeds`), that vector (width,). Everything that
    varies per text (prompt editing, alternation, AND) travels together in one of these."""
    context: torch.Tensor
    pooled: torch.Tensor | None = None

    def to(self, dtype: torch.dtype) -> Cond:
        return Cond(self.context.to(dtype), None if self.pooled is None else self.pooled.to(dtype))

    def is_finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in (self.context, self.pooled) if t is not None)


def as_cond(cond: torch.Tensor | Cond) -> Cond:
    """A Cond from a Cond, a (tokens, width) context or a (1, tokens, width) batch of one."""
    if isinstance(cond, Cond):
        return cond
    return Cond(cond[0] if cond.dim() == 3 else cond)


@dataclass(frozen=True)
class ScheduledCond:
    """One prompt's conditioning over the sampling steps: entries (end_at_step, cond), ascending.
    At denoiser call i (counting from 0, as A1111's CFG denoiser does) the first entry with
    i <= end_at_step is used; past the last one, the first (A1111's fallback)."""
    entries: tuple[tuple[int, Cond], ...]

    @classmethod
    def fixed(cls, cond: torch.Tensor | Cond) -> ScheduledCond:
        return cls(((sys.maxsize, as_cond(cond)),))

    def at(self, step: int) -> Cond:
        for end, cond in self.entries:
            if step <= end:
                return cond
        return self.entries[0][1]

    def to(self, dtype: torch.dtype) -> ScheduledCond:
        converted: dict[int, Cond] = {}
        for _, cond in self.entries:
            converted.setdefault(id(cond), cond.to(dtype))
        return ScheduledCond(tuple((end, converted[id(cond)]) for end, cond in self.entries))


@dataclass(frozen=True)
class ComposableCond:
    """A prompt's AND sub-prompts, each a ScheduledCond with its weight."""
    parts: tuple[tuple[ScheduledCond, float], ...]

    @classmethod
    def fixed(cls, cond: torch.Tensor | Cond) -> ComposableCond:
        return cls(((ScheduledCond.fixed(cond), 1.0),))


class PromptEncoder:
    def __init__(self, tokenizer: CLIPTokenizer, text_model: CLIPTextModel, spec: TextEncoderSpec):
        self.tokenizer = tokenizer
        self.text_model = text_model
        self.spec = spec
        self.comma_id = tokenizer.convert_tokens_to_ids(",</w>")
        self.comma_backtrack = COMMA_BACKTRACK  # comma_padding_backtrack (use_settings)
        # Textual-inversion embeddings for this encoder's width (set per job by the model manager).
        self.embeddings: EmbeddingVocabulary | None = None
        self.embeddings_used: dict[str, Embedding] = {}  # those found in prompts since the last reset

    @property
    def width(self) -> int:
        return self.text_model.config.hidden_size

    # Which of an embedding's tensors this encoder splices ("" for a single-tensor embedding; SDXL's
    # sub-encoders name their own, "clip_l" or "clip_g").
    embedding_part = ""

    @property
    def embedding_signature(self) -> tuple[tuple[str, int], ...]:
        """The shape of the embeddings this model uses, as `Embedding.signature` gives it: the model
        manager keeps one vocabulary per model from the embeddings with this signature."""
        return (("", self.width),)

    @property
    def lora_parts(self) -> dict[str, torch.nn.Module]:
        """The text encoders a LoRA file may change, by the part names of `lora.module_index`."""
        return {"te": self.text_model}

    def _with_embeddings(self, ids: list[int]) -> list[int | Embedding]:
        """Token ids with each embedding name's tokens replaced by the Embedding."""
        vocab = self.embeddings
        if not vocab:
            return ids
        out: list[int | Embedding] = []
        i = 0
        while i < len(ids):
            found = vocab.match(ids, i)
            if found is None:
                out.append(ids[i])
                i += 1
            else:
                length, emb = found
                out.append(emb.for_part(self.embedding_part))
                self.embeddings_used[emb.name] = emb
                i += length
        return out

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]

    def token_count(self, text: str) -> int:
        return len(self.tokenize(text))

    def chunks(self, text: str, emphasis: str = "Original") -> list[Chunk]:
        """Emphasis "None" reads the text literally (brackets and BREAK included); the other modes parse
        it. Each weighted segment is tokenized on its own, as A1111 does."""
        segments = [(text, 1.0)] if emphasis == "None" else prompt_syntax.parse_attention(text)
        texts = [s[0] for s in segments if s is not None]
        ids = iter(self.tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"] if texts else [])
        return build_chunks([None if s is None else (self._with_embeddings(next(ids)), s[1]) for s in segments],
                            self.comma_id, self.comma_backtrack)

    def _row(self, chunk: Chunk) -> list[int]:
        row = [BOS] + chunk.ids + [EOS]
        return row + [self.spec.pad_id] * (CHUNK + 2 - len(row))

    def chunk_ids(self, text: str, emphasis: str = "Original") -> list[list[int]]:
        """The 77-id rows for a prompt, one per chunk."""
        return [self._row(c) for c in self.chunks(text, emphasis)]

    def _transformer(self, ids: torch.Tensor, clip_skip: int,
                     vectors: list[tuple[int, int, torch.Tensor]] = ()) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The encoder's output for (batch, 77) ids (and its pooled vectors, see `_run`); `vectors`
        (row, position, (n, width)) replace the token embeddings there (textual inversion)."""
        if not vectors:
            return self._run(ids, clip_skip)

        def splice(_module, _args, out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            for row, at, v in vectors:
                out[row, at:at + v.shape[0]] = v.to(out.device, out.dtype)
            return out

        handle = self.text_model.get_input_embeddings().register_forward_hook(splice)
        try:
            return self._run(ids, clip_skip)
        finally:
            handle.remove()

    def _run(self, ids: torch.Tensor, clip_skip: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(batch, 77, width) hidden states the U-Net sees, and (batch, dim) pooled vectors for encoders
        whose pooled output the U-Net also takes (None here)."""
        if clip_skip > 1 and self.spec.honours_clip_skip:
            out = self.text_model(ids, output_hidden_states=True)
            inner = getattr(self.text_model, "text_model", self.text_model)
            return inner.final_layer_norm(out.hidden_states[-clip_skip]), None
        return self.text_model(ids).last_hidden_state, None

    @torch.no_grad()
    def encode_texts(self, texts: list[str], clip_skip: int = 1, emphasis: str = "Original") -> list[torch.Tensor]:
        """A (77 * chunks, width) conditioning per text, all with the same number of chunks; the texts
        form one batch for emphasis (see the module docstring). Each distinct text is encoded once."""
        return [z for z, _ in self.encode_with_pooled(texts, clip_skip, emphasis)]

    @torch.no_grad()
    def encode_with_pooled(self, texts: list[str], clip_skip: int = 1, emphasis: str = "Original"
                           ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """`encode_texts`, each text's context with the pooled vector of its FIRST chunk (as A1111 takes
        it; emphasis does not change it), or None for encoders without one. A repeated text gets the
        same objects."""
        if emphasis not in EMPHASIS_MODES:
            raise ValueError(f"Unknown emphasis mode {emphasis!r}; one of {', '.join(EMPHASIS_MODES)}")
        position = {t: j for j, t in enumerate(dict.fromkeys(texts))}
        unique = list(position)
        device = next(self.text_model.parameters()).device
        counts = torch.bincount(torch.tensor([position[t] for t in texts]), minlength=len(unique)).to(device)

        def batch_mean(z: torch.Tensor) -> torch.Tensor:  # the mean over all texts, repeats included
            return (z.sum(dim=(1, 2), dtype=torch.float32) * counts).sum() / (len(texts) * z.shape[1] * z.shape[2])

        chunked = [self.chunks(t, emphasis) for t in unique]
        n_chunks = max(len(c) for c in chunked)
        pieces = []
        pooled = None
        for i in range(n_chunks):
            batch = [c[i] if i < len(c) else Chunk([], []) for c in chunked]
            ids = torch.tensor([self._row(c) for c in batch], device=device)
            vectors = [(j, 1 + at, v) for j, c in enumerate(batch) for at, v in c.embeddings]
            z, chunk_pooled = self._transformer(ids, clip_skip, vectors)
            if i == 0:
                pooled = chunk_pooled
            weights = [[1.0] + c.weights + [1.0] * (CHUNK + 1 - len(c.weights)) for c in batch]
            if emphasis in ("Original", "No norm") and any(w != 1.0 for row in weights for w in row):
                multipliers = torch.tensor(weights, dtype=torch.float32, device=device)
                weighted = z * multipliers[..., None]
                if emphasis == "Original":
                    original_mean, new_mean = batch_mean(z), batch_mean(weighted)
                    if new_mean != 0:
                        weighted = weighted * (original_mean / new_mean)
                z = weighted
            pieces.append(z)
        z = torch.cat(pieces, dim=1)
        by_text = {t: (z[j], None if pooled is None else pooled[j]) for j, t in enumerate(unique)}
        return [by_text[t] for t in texts]

    def encode(self, text: str, clip_skip: int = 1, emphasis: str = "Original") -> torch.Tensor:
        """(77 * chunks, width) conditioning for one prompt text (no schedule, no AND)."""
        return self.encode_texts([text], clip_skip, emphasis)[0]

    def encode_scheduled(self, prompt: str, steps: int, clip_skip: int = 1,
                         emphasis: str = "Original") -> ScheduledCond:
        """Prompt editing and alternation resolved for `steps` sampling steps (no AND splitting: this
        is how the negative prompt is encoded)."""
        return self._scheduled(prompt, steps, clip_skip, emphasis, negative=False)

    def encode_negative(self, prompt: str, steps: int, clip_skip: int = 1, emphasis: str = "Original") -> ScheduledCond:
        """The negative prompt: as `encode_scheduled`, except where a family treats an empty one specially
        (SDXL: all zeros)."""
        return self._scheduled(prompt, steps, clip_skip, emphasis, negative=True)

    def _scheduled(self, prompt: str, steps: int, clip_skip: int, emphasis: str, negative: bool) -> ScheduledCond:
        schedule = prompt_syntax.prompt_schedule(prompt, steps)
        conds = self.encode_conds([text for _, text in schedule], clip_skip, emphasis, negative)
        return ScheduledCond(tuple((end, cond) for (end, _), cond in zip(schedule, conds)))

    def encode_conds(self, texts: list[str], clip_skip: int = 1, emphasis: str = "Original",
                     negative: bool = False) -> list[Cond]:
        """What the U-Net takes for each text (one batch, see `encode_texts`); `negative`: the texts are the
        negative prompt's schedule. Families whose U-Net takes more than a context override this."""
        by_id: dict[int, Cond] = {}
        return [by_id.setdefault(id(z), Cond(z)) for z in self.encode_texts(texts, clip_skip, emphasis)]

    def unet_inputs(self, width: int, height: int, negative: bool = False) -> dict[str, torch.Tensor]:
        """Extra U-Net inputs shared by every image of a job of this size (diffusers' `added_cond_kwargs`
        entries other than the pooled text vector); `negative`: those for the negative prompt's rows, where
        a family's differ (the SDXL refiner's aesthetic score). None for SD 1.x/2.x."""
        return {}

    def use_settings(self, settings) -> None:
        """Take the settings of the job about to run that the encoder reads besides clip skip and emphasis (which
        come with each call): comma_padding_backtrack, and a family's own options (SDXL's `sdxl_clip_l_skip` and
        crop; `modules.settings.Settings`), which a family's encoder adds, calling this too."""
        self.comma_backtrack = int(settings.comma_padding_backtrack)

    def context_positions(self, prompt: str, negative: str, steps: int | prompt_syntax.Timeline,
                          emphasis: str = "Original") -> tuple[int, int]:
        """(all, longest): the positions (77 a chunk) of the contexts `encode_prompt` and `encode_negative` make
        for these prompts over `steps` (the pass's prompt editing timeline), counted from their tokens before
        anything is encoded. Each AND sub-prompt's schedule
        and the negative prompt's are one batch, whose distinct texts are padded to its longest."""
        batches = [prompt_syntax.prompt_schedule(text, steps)
                   for text in dict.fromkeys(text for text, _ in prompt_syntax.split_and(prompt))]
        batches.append(prompt_syntax.prompt_schedule(negative, steps))
        total = longest = 0
        for schedule in batches:
            texts = list(dict.fromkeys(text for _, text in schedule))
            length = max(len(self.chunks(text, emphasis)) for text in texts) * (CHUNK + 2)
            total += len(texts) * length
            longest = max(longest, length)
        return total, longest

    def encode_prompt(self, prompt: str, steps: int, clip_skip: int = 1, emphasis: str = "Original") -> ComposableCond:
        """The positive prompt: AND sub-prompts, each scheduled on its own (one text-encoder batch per
        distinct sub-prompt, as A1111 does)."""
        seen: dict[str, ScheduledCond] = {}
        parts = []
        for text, weight in prompt_syntax.split_and(prompt):
            if text not in seen:
                seen[text] = self.encode_scheduled(text, steps, clip_skip, emphasis)
            parts.append((seen[text], weight))
        return ComposableCond(tuple(parts))

