"""text normalisation and tokenizer coverage, against the real VitsTokenizer."""

from __future__ import annotations

import pytest

from tts_pipeline import modeling
from tts_pipeline.config import DatasetSection
from tts_pipeline.text import OovReport, apply_map, char_label, normalize_text, romanize, tokenizer_view


def test_unicode_forms_lowercase_and_whitespace():
    decomposed = "Cafe\u0301  \t Ｆｉｎｅ\n"  # e + combining acute; full-width letters
    assert normalize_text(decomposed, DatasetSection()) == "caf\u00e9 ｆｉｎｅ"  # NFC
    assert normalize_text(decomposed, DatasetSection(unicode_normalization="NFKC")) == "caf\u00e9 fine"
    assert normalize_text("\ufb01sh", DatasetSection(unicode_normalization="NFKC")) == "fish"  # ligature
    assert normalize_text(decomposed, DatasetSection(unicode_normalization="none", lowercase=False)) == (
        "Cafe\u0301 Ｆｉｎｅ"
    )
    assert normalize_text("Verse 12: 3 men", DatasetSection()) == "verse 12: 3 men"  # numbers left alone


def test_punctuation_map_is_one_pass_longest_first():
    cfg = DatasetSection(punctuation_map={"“": '"', "”": '"', "...": "…", ".": "", "…": "..."})
    # "..." becomes "…" (longest key first) and the result is not mapped again.
    assert normalize_text("“Hi”... ok.", cfg) == '"hi"… ok'
    # A key given decomposed still matches NFC text.
    assert apply_map("caf\u00e9", {"e\u0301": "e"}, "NFC") == "cafe"


def test_oov_map_only_under_map_policy():
    mapping = {"ł": "l", "1": "one"}
    assert normalize_text("Łódź 1", DatasetSection(oov_map=mapping)) == "łódź 1"
    assert normalize_text("Łódź 1", DatasetSection(oov_policy="map", oov_map=mapping)) == "lódź one"


def test_uroman_policy_romanises_then_lowercases():
    cfg = DatasetSection(oov_policy="uroman")
    assert normalize_text("Привет,  МИР", cfg) == "privet, mir"
    assert romanize("plain ascii") == "plain ascii"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    vocab = {modeling.PAD_SYMBOL: 0, **{c: i + 1 for i, c in enumerate("abcdefghij ")}}
    return modeling.make_tokenizer(vocab, tmp_path_factory.mktemp("tok"))


@pytest.mark.parametrize("text", ["abc def", "ABC-def!", "  zzz  ", "xy", "a\u200bb", "jacked ", "ÀBC"])
def test_view_matches_the_tokenizer(tokenizer, text):
    view = tokenizer_view(text, tokenizer)
    prepared, _ = tokenizer.prepare_for_tokenization(text)
    assert view.kept == prepared
    ids = tokenizer(text)["input_ids"]
    assert ids == tokenizer(view.kept)["input_ids"]
    assert "".join(c for c in text.lower() if c not in "abcdefghij ") == "".join(view.dropped)


def test_view_matches_an_is_uroman_tokenizer(tmp_path):
    from transformers import VitsTokenizer

    vocab = {modeling.PAD_SYMBOL: 0, **{c: i + 1 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz ")}}
    modeling.make_tokenizer(vocab, tmp_path)
    tok = VitsTokenizer(
        vocab_file=str(tmp_path / "vocab.json"), pad_token="_", unk_token="_", phonemize=False, is_uroman=True
    )
    text = "Привет мир, 3!"
    view = tokenizer_view(text, tok)
    assert view.kept == tok.prepare_for_tokenization(text)[0] == "privet mir"
    assert view.dropped == [",", "3", "!"]


def test_oov_report_counts_and_labels():
    report = OovReport(max_examples=1)
    report.add("a.wav", "x, y", [",", ","])
    report.add("b.wav", "z!", ["!", ","])
    report.add("c.wav", "fine", [])
    d = report.to_dict()
    assert d["distinct_chars"] == 2 and d["occurrences"] == 4 and d["clips_affected"] == 2
    assert list(d["by_char"]) == ["U+002C", "U+0021"]  # most frequent first
    assert d["by_char"]["U+002C"] == {
        "char": ",",
        "name": "COMMA",
        "category": "Po",
        "count": 3,
        "clips": 2,
        "examples": ["a.wav: x, y"],
    }
    assert char_label("\u200b") == "U+200B"
    assert report.lines()[0].startswith("',' U+002C COMMA: 3x in 2 clip(s)")
    report.add("d.wav", "ß", ["ß"])
    assert [e.char for e in report.spoken()] == ["ß"] and report.to_dict()["distinct_spoken_chars"] == 1
    assert "(spoken: lost speech)" in report.lines()[-1]
