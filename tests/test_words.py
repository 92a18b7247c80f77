"""Word timings for live subtitles (``avatar.words``): from the voice's phoneme timings,
in order, inside the speech, paired with the words said."""

from __future__ import annotations

from avatar.words import text_words, word_times


def test_runs_of_phonemes_pair_with_the_words() -> None:
    timing = [(" ", 0.0, 0.1), ("h", 0.1, 0.15), ("a", 0.15, 0.3), (" ", 0.3, 0.35),
              ("b", 0.35, 0.4), ("ʌ", 0.4, 0.5), (",", 0.5, 0.6), (" ", 0.6, 0.7)]
    assert word_times(["Ha", "bu"], timing) == [("Ha", 0.1, 0.3), ("bu", 0.35, 0.5)]
    # Counts differ (espeak joined two words): the spoken span is shared by length.
    shared = word_times(["a", "bcd"], timing[:3])
    assert shared == [("a", 0.1, 0.15), ("bcd", 0.15, 0.3)]
    assert word_times([], timing) == [] and word_times(["a"], []) == []


def test_text_words_of_each_language() -> None:
    assert text_words("It's twenty-one, isn't it?", "en") == ["It's", "twenty-one", "isn't",
                                                               "it"]
    assert text_words("你好 AI 世界", "zh") == ["你", "好", "AI", "世", "界"]


def test_the_voice_times_every_word_it_says(bundle) -> None:  # noqa: ANN001
    from avatar.voice import Voice

    voice = Voice.load(bundle)
    chunks = list(voice.speak("The jacket weighs 400 grams, and it comes in blue."))
    words = [w for c in chunks for w in c.words]
    assert [w for w, _, _ in words] == ["The", "jacket", "weighs", "four", "hundred", "grams",
                                        "and", "it", "comes", "in", "blue"]
    ends = [b for _, _, b in words]
    starts = [a for _, a, _ in words]
    assert all(a < b for _, a, b in words) and starts == sorted(starts)
    assert ends[-1] <= sum(c.duration for c in chunks) + 1e-3
