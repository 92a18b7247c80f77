"""The voice's text frontend: normalisation, splitting, phonemes, and hostile input."""

from __future__ import annotations

import time

import pytest

from avatar.errors import TwincastError
from avatar.text.frontend import TextConfig, TextFrontend, chinese_number
from avatar.text.normalize import normalize_english
from avatar.text.numbers import cardinal, ordinal, year
from avatar.text.split import pieces, sentences


@pytest.mark.parametrize("written,said", [
    ("Dr. Smith paid $5.20.", "doctor Smith paid five dollars twenty cents."),
    ("It was 25% off", "It was twenty five percent off"),
    ("on 2026-11-28", "on November twenty eighth, twenty twenty six"),
    ("at 3:30 pm", "at three thirty P M"),
    ("at 9:00", "at nine o'clock"),
    ("the 21st time", "the twenty first time"),
    ("in 1999", "in nineteen ninety nine"),
    ("1,200 users", "one thousand two hundred users"),
    ("10 km and 1 kg", "ten kilometers and one kilogram"),
    ("7°C", "seven degrees Celsius"),
    ("see www.example.com", "see w w w dot example dot com"),
    ("mail me@twin.io", "mail me at twin dot io"),
    ("pages 5-10", "pages five to ten"),
    ("<b>bold</b> **text** 😀", "bold text"),
    ("$1.5 million", "one point five million dollars"),
])
def test_normalize(written: str, said: str) -> None:
    assert normalize_english(written) == said


def test_numbers() -> None:
    assert cardinal(0) == "zero" and cardinal(105) == "one hundred five"
    assert ordinal(2) == "second" and ordinal(40) == "fortieth" and ordinal(12) == "twelfth"
    assert year(2005) == "two thousand five" and year(1905) == "nineteen oh five"
    assert chinese_number(25) == "二十五" and chinese_number(305) == "三百零五"
    assert chinese_number(10) == "十" and chinese_number(20000) == "二万"


def test_sentences_keep_abbreviations_and_decimals() -> None:
    got = list(sentences("Dr. Smith arrived at 3.5 km. He left! Did he? 好的。再见。"))
    assert got == ["Dr. Smith arrived at 3.5 km.", "He left!", "Did he?", "好的。", "再见。"]


def test_first_piece_is_short_and_long_sentences_are_cut() -> None:
    text = ("This is a rather long opening sentence, with a clause or two, that goes on "
            "for a while before it ends. " + "word " * 100)
    got = list(pieces(text, first_max=40, max_len=160))
    assert len(got[0]) <= 40
    assert all(len(p) <= 160 for p in got)
    assert " ".join(got).split() == text.split()


def test_pieces_end_at_clauses_not_in_mid_clause() -> None:
    # Each piece is said as an utterance of its own (its own intonation): a sentence
    # without commas used to be cut every 40 characters, a falling end and a pause each.
    text = ("Here once more the almost invariable modern practice is in opposition to a "
            "natural sense of proportion.")
    assert list(pieces(text, first_max=40, max_len=160)) == [text]
    # A first clause longer than the short limit is the first piece, cut at its comma.
    text = ("In the old print each figure has its definite individuality, and one cannot "
            "be mistaken for the other.")
    assert list(pieces(text, first_max=40, max_len=160)) == [
        "In the old print each figure has its definite individuality,",
        "and one cannot be mistaken for the other."]
    # Later pieces pack whole clauses up to the long limit.
    later = "First. " + ", ".join(["a clause of some words"] * 12) + "."
    got = list(pieces(later, first_max=40, max_len=160))
    assert got[0] == "First." and all(120 < len(p) <= 160 for p in got[1:-1])
    assert all(p.endswith((",", ".")) for p in got[1:])
    # Only a clause longer than the long limit is cut between words.
    got = list(pieces("word " * 80, first_max=40, max_len=160))
    assert all(len(p) <= 160 for p in got) and len(got) == 3


def test_mixed_mandarin_and_english() -> None:
    out = list(TextFrontend().pieces("我有25个苹果。Then we go home."))
    assert [p.lang for p in out] == ["zh", "en"]
    assert out[0].phonemes == "wo3 you3 er4 shi2 wu3 ge4 ping2 guo3"
    assert "h" in out[1].phonemes and out[1].sentence_end


@pytest.mark.parametrize("text", ["", "   \n\t ", "😀😀🎉", "!!! ... ???", "\x00\x01\x07",
                                  "مرحبا بالعالم", "שלום עולם"])
def test_nothing_speakable_is_a_clear_error(text: str) -> None:
    with pytest.raises(TwincastError, match="nothing to say"):
        list(TextFrontend().pieces(text))


def test_unsupported_script_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    out = list(TextFrontend().pieces("مرحبا hello there"))
    assert [p.text for p in out] == ["hello there"]
    assert "skipped" in caplog.text


def test_long_text_streams_and_the_limit_refuses() -> None:
    f = TextFrontend()
    t0 = time.perf_counter()
    first = next(f.pieces("Say this. " * 10_000))  # 100,000 characters
    assert first.text == "Say this." and time.perf_counter() - t0 < 2.0
    with pytest.raises(TwincastError, match="limit is 50"):
        next(TextFrontend(TextConfig(max_chars=50)).pieces("x" * 51))
