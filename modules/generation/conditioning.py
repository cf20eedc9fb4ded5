"""The prompt box's token counter, and the conditioning types the pipeline works with.

A prompt becomes conditioning in the models layer: each model family builds the `PromptEncoder` for its
text encoder (`modules.models.prompt_encoder`, which also holds A1111's chunking and emphasis). The
names below are re-exported so the generation layer and its callers have one place to import them from.
"""

from __future__ import annotations

from transformers import CLIPTokenizer

from modules import prompt_syntax
from modules.generation import extra_networks
from modules.models.prompt_encoder import (CHUNK, COMMA_BACKTRACK, EMPHASIS_MODES, Chunk, ComposableCond, Cond,
                                           PromptEncoder, ScheduledCond, build_chunks, chunk_tokens)

__all__ = ["CHUNK", "EMPHASIS_MODES", "Chunk", "ComposableCond", "Cond", "PromptEncoder", "ScheduledCond",
           "build_chunks", "chunk_tokens", "token_count"]


def token_count(tokenizer: CLIPTokenizer, prompt: str, steps: int = 20, backtrack: int = COMMA_BACKTRACK
                ) -> tuple[int, int]:
    """A1111's token counter for a prompt box: (tokens, target), e.g. (12, 75) shown as `12/75`.

    Extra-network tags are not counted; every AND sub-prompt and every text of the prompt-editing
    schedule is counted and the longest wins. A chunk ended early (BREAK, comma back-off) counts as a
    full 75, as in A1111, and the target is the next multiple of 75. Embedding names count as the
    tokens of their names (the counter needs no loaded model)."""
    comma_id = tokenizer.convert_tokens_to_ids(",</w>")
    best = 0
    for sub, _weight in prompt_syntax.split_and(extra_networks.parse(prompt).text):
        for text in dict.fromkeys(text for _end, text in prompt_syntax.prompt_schedule(sub, steps)):
            segments = prompt_syntax.parse_attention(text)
            texts = [s[0] for s in segments if s is not None]
            ids = iter(tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"] if texts else [])
            chunks = build_chunks([None if s is None else (next(ids), s[1]) for s in segments], comma_id, backtrack)
            best = max(best, CHUNK * (len(chunks) - 1) + len(chunks[-1].ids))
    return best, max(1, -(-best // CHUNK)) * CHUNK
