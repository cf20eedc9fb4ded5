"""The history index's search (modules/history.py): words in the prompts (FTS5, or LIKE without it), seed:,
model:, lora:, kind:, dates, paging, newest first."""

from __future__ import annotations

import datetime

import pytest

from modules import history
from modules.history import HistoryIndex, parse_query


def text(prompt: str, seed: int, model: str = "sd15", negative: str = "", extra: str = "") -> str:
    neg = f"\nNegative prompt: {negative}" if negative else ""
    return (f"{prompt}{neg}\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: {seed}, Size: 64x64, "
            f"Model hash: hash{model}, Model: {model}{extra}")


def day(s: str) -> float:
    return datetime.datetime.fromisoformat(s).timestamp()


ROWS = [  # (name, kind, infotext, time)
    ("a.png", "txt2img", text("a red fox in snow", 1, negative="blurry"), day("2026-01-01T10:00")),
    ("b.png", "txt2img", text("a blue whale <lora:ocean:0.7>", 2, model="dreamy"), day("2026-01-02T10:00")),
    ("c.png", "img2img", text("red fox portrait", 3, extra=", Denoising strength: 0.5"), day("2026-01-03T10:00")),
    ("grid-0001.png", "grid", text("a red fox in snow", 1), day("2026-01-03T11:00")),
    ("d.png", "extras", None, day("2026-01-04T10:00")),
]


def fill(index: HistoryIndex, tmp_path) -> dict[str, int]:
    return {name: index.add(tmp_path / name, kind, info, time=t, size=10, mtime=t, thumb=None)
            for name, kind, info, t in ROWS}


def names(index: HistoryIndex, query: str, **kw) -> list[str]:
    rows, total = index.search(parse_query(query), **kw)
    return [r["path"].rsplit("/", 1)[-1] for r in rows]


class NoFts(HistoryIndex):
    def _make_fts(self) -> bool:
        return False


@pytest.fixture(params=["fts5", "like"])
def index(request, tmp_path):
    ix = (HistoryIndex if request.param == "fts5" else NoFts)(tmp_path / "history.sqlite3")
    fill(ix, tmp_path)
    yield ix
    ix.close()


def test_words_match_prompt_or_negative_all_of_them_newest_first(index):
    assert names(index, "fox") == ["grid-0001.png", "c.png", "a.png"]
    assert names(index, "red fox snow") == ["grid-0001.png", "a.png"]
    assert names(index, "blurry") == ["a.png"]  # the negative prompt
    assert names(index, "whale fox") == []
    assert names(index, "") == ["d.png", "grid-0001.png", "c.png", "b.png", "a.png"]


def test_filters(index):
    assert names(index, "seed:1") == ["grid-0001.png", "a.png"]
    assert names(index, "model:dream") == ["b.png"]
    assert names(index, "model:hashdreamy") == ["b.png"]  # by hash
    assert names(index, "lora:ocean") == ["b.png"]
    assert names(index, "lora:oce") == []  # a LoRA's whole name
    assert names(index, "lora:OCEAN model:DREAM") == ["b.png"]  # either case
    assert names(index, "kind:img2img") == ["c.png"]
    assert names(index, "fox kind:grid") == ["grid-0001.png"]
    assert names(index, "since:2026-01-03") == ["d.png", "grid-0001.png", "c.png"]
    assert names(index, "since:2026-01-02 until:2026-01-03") == ["grid-0001.png", "c.png", "b.png"]
    assert names(index, "until:2026-01-01") == ["a.png"]


def test_paging_and_total(index):
    rows, total = index.search(parse_query(""), limit=2, offset=0)
    assert total == 5 and [r["kind"] for r in rows] == ["extras", "grid"]
    assert names(index, "", limit=2, offset=2) == ["c.png", "b.png"]
    assert names(index, "", limit=2, offset=4) == ["a.png"]
    assert index.search(parse_query("fox"), limit=1)[1] == 3


def test_the_same_file_found_again_keeps_its_row(index, tmp_path):
    row_id = index.add(tmp_path / "c.png", "txt2img", text("other words", 5), time=1.0, size=10,
                       mtime=ROWS[2][3], thumb=None)  # what a rescan guesses for a file saved while it ran
    row = index.get(row_id)
    assert (row["kind"], row["seed"], row["prompt"]) == ("img2img", 3, "red fox portrait")


def test_reindexing_a_path_updates_its_row_and_its_words(index, tmp_path):
    before = index.count()
    row_id = index.add(tmp_path / "a.png", "txt2img", text("a green frog", 9), time=1.0, size=5, mtime=2.0, thumb=None)
    assert index.count() == before and index.get(row_id)["seed"] == 9
    assert "a.png" not in names(index, "snow") and names(index, "frog") == ["a.png"]
    index.remove([row_id])
    assert index.get(row_id) is None and names(index, "frog") == []


def test_bad_values_are_refused():
    for bad in ("seed:abc", "kind:video", "since:yesterday"):
        with pytest.raises(ValueError):
            parse_query(bad)


def test_fields_of_reads_hires_and_lora_hashes():
    f = history.fields_of(text("x <lora:a:1>", 5, extra=', Lora hashes: "a: 12, b: 34", Hires upscale: 2, '
                                                        'Hires upscaler: Latent, Denoising strength: 0.6, VAE: kl.pt'))
    assert (f["loras"], f["hires"], f["denoising_strength"], f["vae"]) == ("|a|b|", "2x Latent", 0.6, "kl.pt")
    assert history.fields_of(None)["prompt"] is None


def test_wal_mode(tmp_path):
    ix = HistoryIndex(tmp_path / "h.sqlite3")
    try:
        assert ix._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        ix.close()


def test_a_file_that_is_not_a_database_is_set_aside_and_a_new_index_made(tmp_path, caplog):
    path = tmp_path / "history.sqlite3"
    path.write_bytes(b"this is not SQLite" * 100)
    ix = HistoryIndex(path)
    try:
        assert ix.count() == 0 and ix.integrity() == "ok"
        assert ix.add(tmp_path / "a.png", "txt2img", text("a cat", 1), time=1, size=1, mtime=1, thumb=None) == 1
    finally:
        ix.close()
    aside = list(tmp_path.glob("history.sqlite3.broken-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not SQLite")
    assert "cannot be read" in caplog.text


def test_an_index_of_another_layout_is_rebuilt(tmp_path, caplog):
    import sqlite3

    path = tmp_path / "history.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT, thumb BLOB)")
    db.execute("INSERT INTO images (path) VALUES ('x.png')")
    db.commit()
    db.close()
    ix = HistoryIndex(path)
    try:
        assert ix.count() == 0
        ix.add(tmp_path / "a.png", "txt2img", text("a cat", 1), time=1, size=1, mtime=1, thumb=b"jpeg")
        assert ix.thumbs([1]) == {1: b"jpeg"}
    finally:
        ix.close()
    assert "another layout" in caplog.text
    ix = HistoryIndex(path)  # and opened again as it is
    try:
        assert ix.count() == 1
    finally:
        ix.close()
