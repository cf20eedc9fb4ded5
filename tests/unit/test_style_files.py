"""The style editor's writes into styles.csv files (A1111's format): a style goes back into the file it came from,
a new one into the first file; other rows, other columns and A1111's old `text` column come through; what the
store offers is read again at once."""

from __future__ import annotations

import csv
import io

import pytest

from modules.styles import PromptStyle, StyleStore


def rows(path):
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))


def test_save_writes_into_the_file_in_use_and_new_styles_into_the_first(tmp_path):
    first, second = tmp_path / "styles.csv", tmp_path / "more.csv"
    second.write_text("name,text,negative_prompt,source\nOld,\"{prompt}, old\",ugly,forum\nBoth,in second,,\n",
                      encoding="utf-8")
    first.write_text("\ufeffname,prompt,negative_prompt\nBoth,in first,,\n", encoding="utf-8")
    store = StyleStore((first, second))
    assert store.all()["Both"].prompt == "in first" and store.all()["Old"].prompt == "{prompt}, old"

    assert store.save(PromptStyle("Old", "{prompt}, older", "uglier")) == second
    assert store.all()["Old"] == PromptStyle("Old", "{prompt}, older", "uglier")  # no stale cache
    assert [(r["name"], r["prompt"], r["negative_prompt"], r["source"]) for r in rows(second)] == [
        ("Old", "{prompt}, older", "uglier", "forum"), ("Both", "in second", "", "")]  # `text` became `prompt`

    assert store.save(PromptStyle("  New  ", "x, y", "")) == first  # a new style: the first file
    assert [r["name"] for r in rows(first)] == ["Both", "New"]
    assert first.read_bytes().startswith(b"\xef\xbb\xbf")  # with a BOM, as A1111 writes it

    assert store.delete("Both") == first  # the one in use goes; the second file's one shows again
    assert store.all()["Both"].prompt == "in second"
    assert store.delete("Nothing") is None


def test_a_missing_first_file_is_created_and_bad_names_are_refused(tmp_path):
    store = StyleStore((tmp_path / "styles.csv",))
    assert store.all() == {}
    store.save(PromptStyle("Comma, \"quoted\"\nname", "a, b", "c"))
    assert list(store.all()) == ["Comma, \"quoted\"\nname"]  # csv quoting keeps any text
    for bad in ("", "   ", "None", "# none"):
        with pytest.raises(ValueError, match="needs a name"):
            store.save(PromptStyle(bad, "x", ""))
    assert len(rows(tmp_path / "styles.csv")) == 1


def test_a_name_written_twice_in_one_file_is_changed_in_every_row(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text("name,prompt,negative_prompt\nTwice,first,\nTwice,second,\n", encoding="utf-8")
    store = StyleStore((path,))
    assert store.all()["Twice"].prompt == "second"  # the last row is the one read
    store.save(PromptStyle("Twice", "third", ""))
    assert store.all()["Twice"].prompt == "third"
    assert [r["prompt"] for r in rows(path)] == ["third", "third"]


# --- styles found again in a pasted infotext (A1111's extract_styles_from_prompt, modules/styles.py v1.10) ------

def test_styles_are_taken_out_of_pasted_prompts_last_applied_first():
    from modules.styles import PromptStyle, apply, extract

    ink = PromptStyle("Ink", "{prompt} in ink", "color")
    photo = PromptStyle("Photo", "photo, sharp", "blurry")
    sharp = PromptStyle("Sharp", "sharp", "")  # no negative text: any negative prompt holds it
    empty = PromptStyle("Empty", "", "")  # never found
    prompt, negative = apply([ink, photo], "a cat", "")
    assert (prompt, negative) == ("a cat in ink, photo, sharp", "color, blurry")
    assert extract([empty, ink, photo], prompt, negative) == (["Ink", "Photo"], "a cat", "")
    assert extract([photo], "a cat, photo, sharp", "ugly, blurry") == (["Photo"], "a cat", "ugly")
    assert extract([sharp], "a dog, sharp ", " ugly ") == (["Sharp"], "a dog", "ugly")  # compared stripped
    assert extract([photo, ink], "a cat", "ugly") == ([], "a cat", "ugly")  # nothing: as given
    assert extract([photo], "a cat, photo, sharp", "ugly") == ([], "a cat, photo, sharp", "ugly")  # both must hold
