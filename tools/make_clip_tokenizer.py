"""Derive the CLIP BPE tokenizer files (vocab.json, merges.txt) that ship in configs/tokenizer.

The only public source of the vocabulary that does not need a model hub is the merges list
`bpe_simple_vocab_16e6.txt.gz` inside the `open_clip_torch` wheel on PyPI. CLIP's vocabulary is
fully determined by it: 256 byte symbols, the same 256 with the end-of-word marker `</w>`, one
token per merge (in merge order), then `<|startoftext|>` and `<|endoftext|>`: 49408 entries.

Usage:
    python tools/make_clip_tokenizer.py [path/to/bpe_simple_vocab_16e6.txt.gz]
Without a path it fetches the wheel with `pip download open_clip_torch --no-deps`.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent.parent / "configs" / "tokenizer"
MERGES_USED = 49152 - 256 - 2  # CLIP uses the first 48894 merges of the file


def byte_symbols() -> list[str]:
    """The stand-in character for each byte, in the order byte-level BPE lists them.

    Bytes that are printable Latin-1 characters stand for themselves and come first, in byte
    order; every other byte follows, in byte order, mapped to the code points from 256 upward.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def build(merges_gz: Path) -> tuple[dict[str, int], list[str]]:
    lines = gzip.decompress(merges_gz.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : MERGES_USED + 1]  # line 0 is a version header
    base = byte_symbols()
    tokens = base + [s + "</w>" for s in base]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != 49408:
        raise SystemExit(f"expected 49408 tokens, got {len(vocab)}")
    return vocab, merges


def fetch_merges() -> Path:
    tmp = Path(tempfile.mkdtemp())
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "open_clip_torch", "--no-deps", "-q", "-d", str(tmp)], check=True
    )
    wheel = next(tmp.glob("open_clip_torch-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        target = tmp / "bpe_simple_vocab_16e6.txt.gz"
        target.write_bytes(zf.read("open_clip/bpe_simple_vocab_16e6.txt.gz"))
    return target


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else fetch_merges()
    vocab, merges = build(src)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (OUT_DIR / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {OUT_DIR}")


if __name__ == "__main__":
    main()
