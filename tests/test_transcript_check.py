"""Recordings that stop before their transcripts do: found by forced alignment against any
leading run of the transcript's words, cut to the words heard, left out when too little is.

LJ Speech's copy here has such recordings (LJ001-0096 holds 0.86 s of a 28-word line);
a voice trained on them as they are learns to say a sentence in a second.
"""

from __future__ import annotations

import pytest

from avatar.audio import resample
from training.align import Aligner, cut_text, normalise
from training.voice.features import MIN_WORDS_HEARD, fit_to_speech


def test_cut_text_keeps_spelling_and_drops_a_trailing_comma() -> None:
    text = "Printing, in the only sense with which we are at present concerned, differs"
    assert cut_text(text, 3) == "Printing, in the"
    assert cut_text(text, 12) == ("Printing, in the only sense with which we are at present "
                                  "concerned")
    assert cut_text(text, 99) == text
    # A token that normalises to several words counts as all of them.
    assert cut_text("In 1455 the Bible", 7) == "In 1455"
    assert cut_text("In 1455 the Bible", 8) == "In 1455 the"


def test_fit_to_speech() -> None:
    spoken = {"words": 4, "of": 10, "ends": [0.4, 0.8, 1.2, 1.6]}
    # Stops well before the file's end: cut after the fourth word.
    text, span = fit_to_speech("one two three four five six seven eight nine ten",
                               (0.05, 2.0), spoken, seconds=2.2)
    assert text == "one two three four" and span == (0.05, pytest.approx(1.63))
    # The last word runs into the end of the file: it may be cut mid-way, so it goes.
    text, span = fit_to_speech("one two three four five six seven eight nine ten",
                               (0.05, 1.62), spoken, seconds=1.62)
    assert text == "one two three" and span[1] == pytest.approx(1.23)
    # Too little heard: left out.
    few = {**spoken, "words": MIN_WORDS_HEARD - 1, "ends": [0.4, 0.8]}
    assert fit_to_speech("a b c d", (0, 2), few, 3.0) is None
    # A whole sentence is kept as it is.
    whole = {**spoken, "words": 10}
    assert fit_to_speech("x", (0.2, 1.9), whole, 2.0) == ("x", (0.2, 1.9))


def _lj(name: str):
    import soundfile as sf

    from tests.conftest import DATA

    root = DATA / "ljspeech"
    if not (root / "train").is_dir():
        pytest.skip("../shared/data/ljspeech is not present")
    texts = {ln.split("|")[0]: ln.split("|")[1]
             for ln in (root / "metadata.csv").read_text().splitlines()}
    audio, rate = sf.read(root / "train" / f"{name}.flac", dtype="float32")
    return resample(audio, rate, 16000), texts[name]


def test_spoken_prefix_on_real_recordings() -> None:
    aligner = Aligner()
    audio, text = _lj("LJ001-0001")
    whole = aligner.spoken_prefix(audio, text)
    assert whole.complete and whole.words == len(normalise(text)) == 27
    # The same recording cut at 3 s says only the start of its line.
    part = aligner.spoken_prefix(audio[: 3 * 16000], text)
    assert not part.complete and 4 <= part.words <= 12
    assert part.timing[-1].end <= 3.0
    assert [w.word for w in part.timing] == normalise(text)[: len(part.timing)]
    # A recording of the dataset that is cut short.
    audio, text = _lj("LJ001-0096")
    short = aligner.spoken_prefix(audio, text)
    assert short.of == 28 and short.words <= 4
