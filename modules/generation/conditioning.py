"""Prompt text to the U-Net's cross-attention input, chunked the way AUTOMATIC1111 does it.

A prompt's tokens are cut into chunks of 75. A chunk that fills up while a comma is among its last 20
tokens is cut after that comma instead, and the rest moves to the next chunk. Each chunk becomes
BOS + tokens + EOS + padding = 77 ids (SD 1.x pads with EOS; SD 2.x's OpenCLIP pads with 0), is
encoded on its own, and the chunks are joined along the token axis: a 100-token prompt gives a
(154, width) conditioning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import CLIPTextModel, CLIPTokenizer

CHUNK = 75
COMMA_BACKTRACK = 20
BOS, EOS = 49406, 49407


@dataclass(frozen=True)
class TextEncoderSpec:
    pad_id: int  # EOS for OpenAI CLIP (SD 1.x), 0 for OpenCLIP (SD 2.x)
    honours_clip_skip: bool  # A1111 applies "Clip skip" to SD 1.x only


SPECS = {"sd1": TextEncoderSpec(pad_id=EOS, honours_clip_skip=True),
         "sd2": TextEncoderSpec(pad_id=0, honours_clip_skip=False)}


def chunk_tokens(tokens: list[int], comma_id: int) -> list[list[int]]:
    """Split token ids into chunks of at most 75, moving a short tail after a comma to the next chunk
    (A1111's `comma_padding_backtrack` = 20)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    last_comma = -1
    for tok in tokens:
        if tok == comma_id:
            last_comma = len(current)
        elif len(current) == CHUNK and last_comma != -1 and len(current) - last_comma <= COMMA_BACKTRACK:
            cut = last_comma + 1
            chunks.append(current[:cut])
            current = current[cut:]
            last_comma = -1
        if len(current) == CHUNK:
            chunks.append(current)
            current = []
            last_comma = -1
        current.append(tok)
    if current or not chunks:
        chunks.append(current)
    return chunks


class PromptEncoder:
    def __init__(self, tokenizer: CLIPTokenizer, text_model: CLIPTextModel, family: str):
        self.tokenizer = tokenizer
        self.text_model = text_model
        self.spec = SPECS[family]
        self.comma_id = tokenizer.convert_tokens_to_ids(",</w>")

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]

    def token_count(self, text: str) -> int:
        return len(self.tokenize(text))

    def chunk_ids(self, text: str) -> list[list[int]]:
        """The 77-id rows for a prompt, one per chunk."""
        rows = []
        for chunk in chunk_tokens(self.tokenize(text), self.comma_id):
            row = [BOS] + chunk + [EOS]
            rows.append(row + [self.spec.pad_id] * (CHUNK + 2 - len(row)))
        return rows

    @torch.no_grad()
    def encode(self, text: str, clip_skip: int = 1) -> torch.Tensor:
        """(77 * chunks, width) conditioning for one prompt."""
        p = next(self.text_model.parameters())
        ids = torch.tensor(self.chunk_ids(text), device=p.device)
        if clip_skip > 1 and self.spec.honours_clip_skip:
            out = self.text_model(ids, output_hidden_states=True)
            z = self.text_model.text_model.final_layer_norm(out.hidden_states[-clip_skip]) \
                if hasattr(self.text_model, "text_model") else self.text_model.final_layer_norm(out.hidden_states[-clip_skip])
        else:
            z = self.text_model(ids).last_hidden_state
        return z.reshape(-1, z.shape[-1])
