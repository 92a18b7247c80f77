"""Voice: the alignment search, ci-preset training on the sample, the bundle's voice,
streaming synthesis, ``say``/``render --text``/``bench voice`` and bad text."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import LJ, read_audio, run_cli


def test_monotonic_alignment_finds_the_obvious_path() -> None:
    from avatar.models.voice import monotonic_alignment

    # Three symbols whose means are 0, 5 and 10; frames sit at those values 2, 3 and 4
    # times in order, then padding.
    mu = torch.tensor([0.0, 5.0, 10.0])
    y = torch.tensor([0, 0, 5, 5, 5, 10, 10, 10, 10, 99.0])
    logp = -0.5 * (mu[:, None] - y[None, :]) ** 2
    path = monotonic_alignment(logp[None], torch.tensor([3]), torch.tensor([9]))[0]
    assert path[:, :9].sum(0).eq(1).all() and path[:, 9].sum() == 0  # a symbol per frame
    assert path.sum(1).tolist() == [2, 3, 4]
    # Fewer symbols in a batch item than the batch's widest: padding gets no frame.
    logp2 = torch.full((2, 4, 6), -1.0)
    path2 = monotonic_alignment(logp2, torch.tensor([4, 2]), torch.tensor([6, 3]))
    assert path2[1, 2:].sum() == 0 and path2[1, :, 3:].sum() == 0
    assert (path2[1].sum(1)[:2] >= 1).all() and (path2[0].sum(1) >= 1).all()


def test_symbols_skip_unknown_characters() -> None:
    from avatar.models.voice import SYMBOLS, encode

    ids, unknown = encode("hˈɛloʊ☃")
    assert unknown == {"☃"}
    assert "".join(SYMBOLS[i] for i in ids) == " hˈɛloʊ "


def test_stress_and_length_marks_become_features_of_their_phones() -> None:
    from avatar.models.voice import N_SYMBOLS, SYMBOLS, encode, split_marks, symbol_of

    plain, _ = encode("sˈiːz ˌa")
    assert "".join(SYMBOLS[i] for i in plain) == " sˈiːz ˌa "  # the old table, unchanged
    ids, unknown = encode("sˈiːz ˌa☃", marks=True)
    assert unknown == {"☃"}
    sym, stress, long = (t.tolist() for t in split_marks(torch.tensor(ids)))
    assert "".join(symbol_of(i) for i in ids) == " siz a "
    assert stress == [0, 0, 1, 0, 0, 2, 0] and long == [0, 0, 1, 0, 0, 0, 0]
    assert max(ids) < 6 * N_SYMBOLS and sym == [SYMBOLS.index(c) for c in " siz a "]
    # A stress mark before a consonant marks the syllable up to its vowel.
    ids, _ = encode("ˈstɑp", marks=True)
    assert split_marks(torch.tensor(ids))[1].tolist() == [0, 1, 1, 1, 0, 0]


def test_a_voice_exported_before_marks_still_loads_its_symbols() -> None:
    import dataclasses

    from avatar.models.voice import VOICE_PRESETS, AcousticModel, VoiceConfig

    old = dataclasses.asdict(VOICE_PRESETS["ci"])
    del old["marks"]  # what manifests written before the field hold
    cfg = VoiceConfig.from_dict(old)
    assert not cfg.marks and VOICE_PRESETS["cpu"].marks
    model = AcousticModel(cfg).eval()
    assert not hasattr(model.encoder, "stress")  # the old weights' names, nothing more
    mel, frames = model.synthesise(torch.tensor([[1, 20, 21, 1]]))
    assert mel.shape[0] == 80 and len(frames) == 4


def test_bundle_has_a_voice_that_streams(bundle: Path) -> None:
    from avatar.voice import Voice

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "voice.safetensors" in manifest["files"] and manifest["voice"]["steps"] > 0
    voice = Voice.load(bundle, "cpu")
    text = "Good morning. The second sentence follows the first one, and then a third."
    chunks = list(voice.speak(text))
    assert len(chunks) >= 2  # streamed piece by piece, the first one short
    t = 0.0
    for c in chunks:
        assert c.rate == 22050 and c.audio.dtype == np.float32 and len(c.audio) > 0
        assert abs(c.start - t) < 1e-6 and np.abs(c.audio).max() <= 1.0
        assert c.phonemes and all(t <= a <= b <= c.start + c.duration + 1e-6
                                  for _, a, b in c.phonemes)
        t += c.duration
    # The first word starts at once (a short lead-in, however long the recordings' own);
    # the pause before a later sentence is the voice's.
    from avatar.voice import LEAD_FRAMES

    assert chunks[0].phonemes[0][1] <= LEAD_FRAMES * 256 / 22050 + 1e-9
    model = voice.model
    from avatar.models.voice import encode

    ids, _ = encode(next(voice.frontend.pieces("Good morning.")).phonemes, model.cfg.marks)
    _, free = model.synthesise(torch.tensor([ids]), 1.0, 30.0)
    _, capped = model.synthesise(torch.tensor([ids]), 1.0, 30.0, lead=LEAD_FRAMES)
    assert free[0] > LEAD_FRAMES and capped[0] == LEAD_FRAMES
    assert torch.equal(free[1:], capped[1:])
    slow = sum(c.duration for c in voice.speak(text, pace=0.5))
    assert slow > 1.5 * t  # half the pace: about twice as long


def test_say_render_text_and_bench(bundle: Path, tmp_path: Path) -> None:
    wav = tmp_path / "hello.wav"
    proc = run_cli("say", bundle, "Hello, this is my voice.", "-o", wav)
    assert proc.returncode == 0, proc.stderr
    audio = read_audio(wav, 22050)
    assert len(audio) > 0.3 * 22050 and np.abs(audio).max() > 0.01
    mp4 = tmp_path / "talk.mp4"
    proc = run_cli("render", bundle, "--text", "Hello there.", "-o", mp4)
    assert proc.returncode == 0, proc.stderr
    assert len(read_audio(mp4)) > 0.2 * 16000
    proc = run_cli("bench", "voice", bundle, "--repeats", "1")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["rtf"] > 0 and report["first_chunk_ms"] > 0


@pytest.mark.parametrize("text,message", [
    ("", "empty"),
    ("🙂🙂 !!! ...", "no speakable words"),
    ("\x07\x1b\x7f", "no speakable words"),
    ("שלום עולם", "no speakable words"),
])
def test_bad_text_is_a_clear_error(bundle: Path, tmp_path: Path, text: str,
                                   message: str) -> None:
    out = tmp_path / "x.wav"
    proc = run_cli("say", bundle, text, "-o", out)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_long_and_mixed_text(bundle: Path) -> None:
    from avatar.errors import TwincastError
    from avatar.text.frontend import TextConfig
    from avatar.voice import Voice

    voice = Voice.load(bundle, "cpu", TextConfig(max_chars=1000))
    with pytest.raises(TwincastError, match="limit"):
        next(voice.speak("word " * 1000))
    # Unsupported script beside English: skipped with a warning, the rest is said.
    audio = voice.say("Hello שלום there")
    assert len(audio) > 0


def test_bundle_without_voice_and_bad_pace(bundle: Path, tmp_path: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest.pop("voice")
    (b / "manifest.json").write_text(json.dumps(manifest))
    proc = run_cli("say", b, "Hello.", "-o", tmp_path / "x.wav")
    assert proc.returncode == 2 and "has no voice" in proc.stderr
    # bench serve's clients send text: one line before any server starts.
    proc = run_cli("bench", "serve", b, "--sessions", "1", "--seconds", "1")
    assert proc.returncode == 2 and "has no voice" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("say", bundle, "Hello.", "-o", tmp_path / "x.wav", "--pace", "5")
    assert proc.returncode == 2 and "pace" in proc.stderr


def test_voice_training_resumes(bundle: Path, tmp_path: Path) -> None:
    import dataclasses

    from training.voice.train import train_voice, voice_preset

    work = bundle.parent.parent
    cfg = dataclasses.replace(voice_preset("ci"), steps=20)
    first = train_voice(work / "features", tmp_path / "v", cfg)
    assert first.steps == 20
    more = train_voice(work / "features", tmp_path / "v", dataclasses.replace(cfg, steps=30))
    # Another step count is another config: it starts over rather than mixing runs.
    assert more.steps == 30
    again = train_voice(work / "features", tmp_path / "v", dataclasses.replace(cfg, steps=30))
    assert again.steps == 30 and again.seconds >= more.seconds


@pytest.fixture(scope="module")
def lj_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six LJ Speech training recordings and their metadata lines (copied to a temp dir)."""
    from tests.conftest import DATA

    src = DATA / "ljspeech"
    if not (src / "train").is_dir():
        pytest.skip("../shared/data/ljspeech is not present")
    d = tmp_path_factory.mktemp("lj")
    files = sorted((src / "train").glob("*.flac"))[:6]
    keep = {f.stem for f in files}
    for f in files:
        shutil.copy(f, d / f.name)
    lines = [ln for ln in (src / "metadata.csv").read_text().splitlines()
             if ln.split("|")[0] in keep]
    (d / "metadata.csv").write_text("\n".join(lines) + "\n")
    return d


def test_voice_only_enrolment(lj_small: Path, tmp_path: Path) -> None:
    work = tmp_path / "w"
    proc = run_cli("enrol", "--voice", lj_small, "--transcript", lj_small / "metadata.csv",
                   "--workdir", work, "--preset", "ci", "--name", "reader")
    assert proc.returncode == 0, proc.stderr
    bundle = work / "avatars" / "reader"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "voice" in manifest and "head" not in manifest
    assert manifest["voice"]["utterances"] == 6
    # LJ001-0004's recording stops after "produced the block books": its line was cut to
    # the words heard, and the speech span with it.
    lines = (work / "voice_features" / "utterances.jsonl").read_text().splitlines()
    rows = {r["clip"]: r for r in map(json.loads, lines)}
    assert rows["LJ001-0004"]["text"] == "produced the block books"
    assert rows["LJ001-0004"]["end"] < 2.0
    assert rows["LJ001-0001"]["text"].endswith("represented in the Exhibition")
    assert "stop before their transcript" in proc.stderr
    proc = run_cli("say", bundle, "A voice without a face.", "-o", tmp_path / "a.wav")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("render", bundle, "--text", "Hello.", "-o", tmp_path / "a.mp4")
    assert proc.returncode == 2 and "no face" in proc.stderr
    # --voice without any transcript, and a transcript naming none of the files.
    proc = run_cli("enrol", "--voice", lj_small, "--workdir", tmp_path / "x")
    assert proc.returncode == 2 and "transcript" in proc.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("nobody|hello\n")
    proc = run_cli("enrol", "--voice", lj_small, "--transcript", bad, "--workdir", tmp_path / "y")
    assert proc.returncode == 2 and "names none" in proc.stderr


def test_eval_voice_tells_real_from_untrained(bundle: Path, tmp_path: Path) -> None:
    from tests.conftest import DATA

    data = DATA / "ljspeech" / "eval"
    if not data.is_dir():
        pytest.skip("../shared/data/ljspeech is not present")
    out = tmp_path / "ev"
    proc = run_cli("eval", "voice", bundle, "--data", data, "--limit", "3", "-o", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["clips"] == 3 and report["words"] > 10
    # A tiny voice trained for seconds on another (synthetic) speaker: the measures must
    # see it is neither intelligible nor this reader.
    assert report["wer_real"] < report["wer_synth"]
    # The real recordings through the voice's own vocoder (Griffin-Lim here) stay far more
    # intelligible than the untrained model's speech: the gap is the acoustic model's.
    assert report["wer_vocoded"] < report["wer_synth"]
    assert 0 <= report["duration_within_15pct_steady_rate"] <= 1
    assert all(c["phones"] > c["words"] for c in report["per_clip"])
    assert report["similarity_real_real"] > report["similarity_synth_real"] + 0.1
    assert np.isfinite(report["mcd_db"]) and report["rtf"] > 0
    assert (out / "report.png").exists() and (out / "eval_bigram.arpa").exists()
    unseen = report["unseen"]
    assert unseen["sentences"] == 3 and unseen["words"] > 10
    # The tiny voice is unintelligible on unseen text too, and the gap is the difference.
    assert unseen["wer_synth"] > 0.5 and (out / "unseen_bigram.arpa").exists()
    # The gap is taken before the WERs are rounded to four places: within a rounding step.
    assert abs(unseen["gap_to_in_domain_points"]
               - 100 * (unseen["wer_synth"] - report["wer_synth"])) <= 0.06
    assert unseen["worst"][0]["errors"] > 0 and "heard" in unseen["worst"][0]


def test_unseen_sentences_cover_what_a_livestream_says() -> None:
    from training.voice.evaluate import unseen_sentences

    sentences = unseen_sentences()
    assert len(sentences) >= 100
    texts = [t for t, _ in sentences]
    assert sum(t.endswith("?") for t in texts) >= 15
    assert sum(any(ch.isdigit() for ch in t) for t in texts) >= 15
    assert any(len(words) > 25 for _, words in sentences)
    # Digits are read out in the reference words, never left as digits.
    assert all(w.isalpha() or "'" in w for _, words in sentences for w in words)


def test_the_recogniser_hears_the_first_words_of_a_clip_that_starts_with_speech(
        tmp_path: Path) -> None:
    """LJ Speech's recordings, like the voice's output, start with the first word; without
    silence before it pocketsphinx lost the first words of these two (measured: 22 of the
    eval split's 54 recordings heard with their first two words right, 27 with it)."""
    import soundfile as sf

    from avatar.audio import SPEECH_RATE, resample
    from training.voice.evaluate import (
        LEAD_IN,
        Recogniser,
        edit_distance,
        words_of,
        write_bigram_arpa,
    )

    if not (LJ / "eval").is_dir():
        pytest.skip("../shared/data/ljspeech is not present")
    lines = dict(ln.split("|", 1) for ln in (LJ / "metadata.csv").read_text().splitlines())
    refs = {f.stem: words_of(lines[f.stem].rsplit("|", 1)[-1])
            for f in sorted((LJ / "eval").glob("*.flac"))}
    write_bigram_arpa(list(refs.values()), tmp_path / "lm.arpa")
    recognise = Recogniser(tmp_path / "lm.arpa", {w for r in refs.values() for w in r})
    assert LEAD_IN >= 0.25
    for clip in ("LJ001-0125", "LJ001-0146"):
        audio, rate = sf.read(LJ / "eval" / f"{clip}.flac", dtype="float32")
        heard = recognise(resample(audio, rate, SPEECH_RATE))
        assert heard[:2] == refs[clip][:2], (clip, heard)
        assert edit_distance(refs[clip], heard) <= 1


def test_trained_vocoder_in_the_bundle(bundle: Path, tmp_path: Path) -> None:
    import dataclasses

    from avatar.models.vocoder import VocoderConfig
    from avatar.voice import Voice, _TrainedVocoder
    from training.voice.export import add_voice
    from training.voice.train import train_voice, voice_preset
    from training.voice.vocoder import VocoderTrainConfig

    work = bundle.parent.parent
    cfg = dataclasses.replace(voice_preset("ci"), steps=10, vocoder=VocoderTrainConfig(
        model=VocoderConfig(dim=32, blocks=2, intermediate=64), steps=6, batch=2,
        adapt_steps=3))
    trained = train_voice(work / "features", tmp_path / "v", cfg)
    assert trained.vocoder is not None and trained.vocoder.steps == 6
    assert trained.vocoder.adapt_steps == 3
    assert (tmp_path / "v" / "vocoder_curves.png").exists()
    assert (tmp_path / "v" / "vocoder_adapt_curves.png").exists()
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    add_voice(b, trained, "ci")
    manifest = json.loads((b / "manifest.json").read_text())
    assert manifest["voice"]["vocoder"]["kind"] == "vocos"
    assert manifest["voice"]["vocoder"]["adapt_steps"] == 3
    # The new weights went in beside the old under new names; the old ones are gone.
    assert manifest["voice"]["vocoder"]["file"] in manifest["files"]
    assert manifest["voice"]["file"] != "voice.safetensors"
    assert not (b / "voice.safetensors").exists()
    assert sorted(p.name for p in b.glob("*.safetensors")) == sorted(
        f for f in manifest["files"] if f.endswith(".safetensors"))
    voice = Voice.load(b, "cpu")
    assert isinstance(voice.vocoder, _TrainedVocoder)
    mel = torch.full((80, 50), -5.0)
    assert len(voice.vocoder(mel)) == 50 * 256  # one hop of samples per mel frame
    audio = voice.say("A trained vocoder.")
    assert np.isfinite(audio).all() and len(audio) > 0
    # A long sentence is one piece, vocoded in chunks that start at symbol boundaries and
    # join up to the whole piece's audio.
    text = "A trained vocoder says this whole sentence as one utterance in several chunks."
    chunks = list(voice.speak(text))
    assert len(chunks) >= 2 and chunks[0].text == text and chunks[1].text == ""
    assert chunks[0].duration < 0.8
    t = 0.0
    for c in chunks:
        assert abs(c.start - t) < 1e-9 and c.phonemes
        assert all(c.start - 1e-9 <= a < b <= c.start + c.duration + 1e-9
                   for _, a, b in c.phonemes)
        t += c.duration
    torch.manual_seed(0)
    whole = voice.say(text)
    assert np.allclose(np.concatenate([c.audio for c in chunks]), whole, atol=1e-4)


def test_vocoder_segments_join_into_the_whole() -> None:
    from avatar.models.vocoder import Vocoder, VocoderConfig

    torch.manual_seed(0)
    voc = Vocoder(VocoderConfig(dim=32, blocks=3, intermediate=64)).eval()
    mel = torch.randn(80, 200) - 4
    whole = voc.synthesise(mel)
    cuts = [0, 7, 40, 41, 130, 200]
    parts = [voc.segment(mel, a, b) for a, b in zip(cuts, cuts[1:], strict=False)]
    assert [len(p) for p in parts] == [256 * (b - a) for a, b in zip(cuts, cuts[1:],
                                                                     strict=False)]
    assert torch.allclose(torch.cat(parts), whole, atol=1e-5)
    # Less context than the network's reach would leave seams: the margin is needed.
    short = voc.synthesise(mel[:, 40 - 5: 130 + 5])[5 * 256: 95 * 256]
    assert not torch.allclose(short, whole[40 * 256: 130 * 256], atol=1e-5)


def test_griffin_lim_chunks_join_without_seams() -> None:
    """Griffin-Lim vocoded chunk by chunk (a real recording's mel) is as consistent with
    its magnitude as the whole at once, at the seams too, where chunks vocoded apart are
    not; and it is the same audio every time."""
    from avatar.audio import VOICE_MEL, load_audio, log_mel
    from avatar.vocoder import GriffinLim

    clip = LJ / "train" / "LJ001-0002.flac"
    if not clip.exists():
        pytest.skip("../shared/data/ljspeech is not present")
    s = VOICE_MEL
    x = load_audio(clip, s.rate)
    mel = torch.from_numpy(log_mel(x, s.rate, s.n_fft, s.win, s.hop, s.n_mels, s.f_max))
    gl = GriffinLim(s, 32)
    n = mel.shape[1]
    cuts = [0, 48, 140, n]
    spans = list(zip(cuts, cuts[1:], strict=False))
    mag = gl.magnitude(mel)

    def error(wav: np.ndarray, at: slice = slice(None)) -> float:
        got = gl._stft(torch.from_numpy(wav))[:, :n].abs()[:, at]
        return float(torch.linalg.norm(got - mag[:, at]) / torch.linalg.norm(mag[:, at]))

    whole = gl(mel)
    stream = gl.stream(mel)
    chunked = np.concatenate([stream.chunk(a, b) for a, b in spans])
    apart = np.concatenate([gl(mel[:, a:b]) for a, b in spans])
    assert len(whole) == len(chunked) == n * s.hop
    assert error(chunked) <= 1.1 * error(whole)
    seams = [slice(c - 3, c + 3) for c in cuts[1:-1]]
    assert all(error(chunked, at) <= 1.3 * error(whole, at) for at in seams)
    assert any(error(apart, at) > 1.3 * error(whole, at) for at in seams)
    assert np.array_equal(gl(mel), whole)
    with pytest.raises(ValueError, match="in order"):
        gl.stream(mel).chunk(48, 140)


def test_chunk_spans_start_short_and_cut_at_symbols() -> None:
    from avatar.voice import chunk_spans

    ends = np.cumsum(np.full(100, 5))  # 100 symbols of 5 frames
    spans = chunk_spans(ends, first=24, later=100)
    # The second as long as the first, then doubling up to ``later``, cut at symbols.
    assert spans == [(0, 25), (25, 50), (50, 100), (100, 200), (200, 300), (300, 400),
                     (400, 500)]
    assert chunk_spans(ends[:54], first=24, later=100) == [(0, 25), (25, 50), (50, 100),
                                                           (100, 200), (200, 270)]
    assert chunk_spans(ends[:45], first=24, later=400) == [(0, 25), (25, 50), (50, 100),
                                                           (100, 225)]
    assert chunk_spans(np.array([3, 10])) == [(0, 10)]  # shorter than a first chunk: one
    assert chunk_spans(np.array([20, 30])) == [(0, 30)]


def test_teacher_forced_mels_line_up_with_their_recordings(bundle: Path) -> None:
    """The vocoder's adaptation pairs the acoustic model's mel of a sentence with the real
    waveform of that sentence: the waveform's own mel must match the cached one frame for
    frame (a pair shifted by even a frame would teach the vocoder to smear)."""
    from avatar.audio import log_mel
    from avatar.models.voice import VOICE_PRESETS, AcousticModel
    from training.voice.data import load_utterances, mel_stats
    from training.voice.train import teacher_forced_mels

    utts = load_utterances(bundle.parent.parent / "features", marks=True)
    mean, std = mel_stats(utts)
    pairs = teacher_forced_mels(AcousticModel(VOICE_PRESETS["ci"]), utts, mean, std,
                                torch.device("cpu"), 4000)
    assert len(pairs) == len(utts)
    by_length = sorted(pairs, key=lambda p: -p[0].shape[1])
    for u, (pred, wav) in zip(utts, by_length, strict=True):  # both longest first
        assert pred.shape == u.mel.shape and len(wav) == u.mel.shape[1] * 256
        own = log_mel(wav, 22050, 1024, 1024, 256, 80, f_max=8000.0)
        n = u.mel.shape[1]  # away from the cut's edges:
        same = np.abs(own[:, 4: n - 4] - u.mel[:, 4: n - 4]).mean()
        shifted = np.abs(own[:, 5: n - 3] - u.mel[:, 4: n - 4]).mean()
        assert same < 0.05 < shifted, (same, shifted)


def test_vocoder_adaptation_is_redone_for_another_acoustic_model(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The first stage's checkpoint survives a retrained acoustic model (its digest leaves
    the adaptation's settings out); the adaptation, which learned one acoustic model's
    mels, resumes only for that model."""
    import dataclasses
    import logging

    from avatar.models.vocoder import Vocoder, VocoderConfig
    from training.voice.vocoder import TrainedVocoder, VocoderTrainConfig, adapt_vocoder

    cfg = VocoderTrainConfig(model=VocoderConfig(dim=16, blocks=1, intermediate=32),
                             batch=2, adapt_steps=2)
    assert cfg.digest() == dataclasses.replace(cfg, adapt_steps=9, adapt_lr=1.0).digest()
    assert cfg.adapt_digest("a") != cfg.adapt_digest("b")
    assert cfg.adapt_digest("a") == dataclasses.replace(cfg, adapt_minutes=1).adapt_digest("a")
    rng = np.random.default_rng(0)
    pairs = [(rng.normal(-4, 1, (80, 60)).astype(np.float32),
              rng.normal(0, 0.1, 60 * 256).astype(np.float32)) for _ in range(3)]

    def adapt(acoustic: str) -> bool:
        """Whether the adaptation resumed."""
        caplog.clear()
        with caplog.at_level(logging.INFO, "training.voice.vocoder"):
            out = adapt_vocoder(TrainedVocoder(Vocoder(cfg.model), 1.0, 5), pairs, tmp_path,
                                cfg, torch.device("cpu"), acoustic)
        assert out.adapt_steps == 2 and out.steps == 5
        return "resuming vocoder_adapt" in caplog.text

    assert not adapt("a")
    assert adapt("a")
    assert not adapt("b")


def test_a_vocoder_stage_its_cap_cannot_fit_gets_the_time_for_its_floor(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A cap that fits almost no steps on this host is lengthened to fit the stage's floor
    (here a tenth of 400 steps), and the plan records the cap the stage ran under."""
    import dataclasses
    import logging

    from avatar.models.vocoder import Vocoder, VocoderConfig
    from training.voice.vocoder import TrainedVocoder, VocoderTrainConfig, adapt_vocoder

    cfg = VocoderTrainConfig(model=VocoderConfig(dim=16, blocks=1, intermediate=32),
                             batch=2, adapt_steps=400, adapt_minutes=0.0005,
                             adapt_min_share=0.1, max_stretch=1e6)
    rng = np.random.default_rng(0)
    pairs = [(rng.normal(-4, 1, (80, 60)).astype(np.float32),
              rng.normal(0, 0.1, 60 * 256).astype(np.float32)) for _ in range(3)]
    with caplog.at_level(logging.INFO, "training.voice.vocoder"):
        out = adapt_vocoder(TrainedVocoder(Vocoder(cfg.model), 1.0, 5), pairs, tmp_path,
                            cfg, torch.device("cpu"), "a")
    plan = out.plan["vocoder_adapt"]
    assert plan["minutes"] > cfg.adapt_minutes
    assert "so it gets" in caplog.text
    # The cap was planned for 40 steps at the probed speed; the host's noise may cost some.
    assert out.adapt_steps >= 20
    # Planned where the preset's cap already fits the floor: the cap stays as it is.
    roomy = dataclasses.replace(cfg, adapt_steps=3, adapt_minutes=5.0)
    out = adapt_vocoder(TrainedVocoder(Vocoder(cfg.model), 1.0, 5), pairs, tmp_path / "r",
                        roomy, torch.device("cpu"), "a")
    assert out.plan["vocoder_adapt"]["minutes"] == 5.0 and out.adapt_steps == 3


def test_speaking_rate_is_calibrated_on_held_out_sentences() -> None:
    from training.voice.train import HOLDOUT_EVERY, split_holdout

    few = list(range(2 * HOLDOUT_EVERY - 1))
    assert split_holdout(few) == (few, [])  # a small enrolment keeps everything
    many = list(range(118))
    keep, held = split_holdout(many)
    assert len(held) == 12 and not set(keep) & set(held) and len(keep) + len(held) == 118


def test_held_out_scores_are_tracked_across_a_checkpoint() -> None:
    """Training notes its lowest held-out loss and the step (for the log and curves; the
    exported weights are the last step's)."""
    from avatar.models.voice import VOICE_PRESETS, AcousticModel
    from training.voice.train import VoiceState

    model = AcousticModel(VOICE_PRESETS["ci"])
    state = VoiceState(model, torch.optim.SGD(model.parameters(), lr=0.1))
    state.progress.step = 100
    assert state.score_held_out(1.0)
    state.progress.step = 200
    assert not state.score_held_out(1.5)
    assert state.best_step == 100 and state.best_loss == 1.0
    other = AcousticModel(VOICE_PRESETS["ci"])
    again = VoiceState(other, torch.optim.SGD(other.parameters(), lr=0.1))
    again.load_state_dict(state.state_dict())
    assert again.best_step == 100 and again.best_loss == 1.0
    assert again.score_held_out(0.5) and again.best_step == 200


def test_learning_rate_anneals_by_the_time_cap() -> None:
    """A run stopped by its wall-time cap long before its step count has still decayed its
    learning rate by then (the cpu preset always stops on the cap)."""
    from training.voice.train import _lr_factor

    assert _lr_factor(0, 8000) < 0.01  # warming up
    assert _lr_factor(1000, 8000, time_done=0.1) == pytest.approx(0.875)  # steps lead
    assert _lr_factor(1000, 8000, time_done=0.5) == pytest.approx(0.5)  # the clock leads
    assert _lr_factor(3000, 8000, time_done=1.0) == pytest.approx(0.05)
    assert _lr_factor(8000, 8000) == pytest.approx(0.05)


def test_bfloat16_training_step_matches_float32() -> None:
    """Under bfloat16 autocast the losses of one step stay within a few percent of float32
    (the alignment search itself runs in float32 either way)."""
    from avatar.models.voice import VOICE_PRESETS, AcousticModel
    from training.voice.data import Batcher, Utterance
    from training.voice.train import VoiceState, train_step

    rng = np.random.default_rng(0)
    utts = [Utterance(str(i), "x", rng.integers(1, 60, 12).astype(np.int64),
                      rng.normal(size=(80, 40 + 3 * i)).astype(np.float32)) for i in range(4)]
    mean, std = np.zeros(80, np.float32), np.ones(80, np.float32)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        model = AcousticModel(VOICE_PRESETS["ci"])
        state = VoiceState(model, torch.optim.SGD(model.parameters(), lr=0.0))
        out[dtype] = train_step(state, Batcher(utts, 10_000), mean, std,
                                torch.device("cpu"), dtype)
    for k, v in out[torch.float32].items():
        assert np.isfinite(out[torch.bfloat16][k])
        assert out[torch.bfloat16][k] == pytest.approx(v, rel=0.05), k
    assert out[torch.bfloat16] != out[torch.float32]  # autocast did take effect


def test_phone_count_leaves_out_separators_punctuation_and_marks() -> None:
    from avatar.text.frontend import TextFrontend
    from training.voice.evaluate import phone_count

    fe = TextFrontend()
    one = phone_count(fe, "cat")
    assert one == 3  # k, a, t: no stress mark, no word separator
    assert phone_count(fe, "Cat, cat. Cat!") == 3 * one


def test_packed_cache_needs_no_text_frontend(bundle: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache packed for a GPU machine (no phonemizer, no espeak-ng there) gives training
    the same utterances, pieces included, without building a text frontend."""
    from training.voice import data
    from training.voice.pack import pack

    packed = pack(bundle.parent.parent, tmp_path / "p")
    assert packed == tmp_path / "p" / "voice_features"
    assert not list(packed.rglob("crops")) and not list(packed.rglob("frames.npz"))
    src = data.load_utterances(bundle.parent.parent / "features", marks=True)

    class NoFrontend:
        def __init__(self, *args: object, **kwargs: object):
            raise AssertionError("a packed cache should need no text frontend")

    monkeypatch.setattr(data, "TextFrontend", NoFrontend)
    got = data.load_utterances(packed, marks=True)
    assert [u.text for u in got] == [u.text for u in src] and got
    for a, b in zip(src, got, strict=True):
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.mel, b.mel)
        assert a.first_frame == b.first_frame and b.audio is not None and b.audio.exists()
        assert len(a.pieces) == len(b.pieces) >= 1
        assert all(np.array_equal(p, q) for p, q in zip(a.pieces, b.pieces, strict=True))
    with pytest.raises(AssertionError, match="no text frontend"):
        data.load_utterances(bundle.parent.parent / "features", marks=True)


def test_voice_stages_train_side_by_side_then_finish(bundle: Path, tmp_path: Path) -> None:
    """``train voice --only acoustic`` and ``--only vocoder`` at once, then a run without
    ``--only`` that resumes both (training no further), adapts the vocoder and writes a
    voice-only bundle where the workdir has none."""
    from concurrent.futures import ThreadPoolExecutor

    from training.voice.pack import pack

    work = tmp_path / "p"
    pack(bundle.parent.parent, work)
    caps = ("--preset", "cpu", "--max-minutes", "0.05", "--vocoder-minutes", "0.05")
    with ThreadPoolExecutor(2) as ex:
        acoustic, vocoder = ex.map(lambda stage: run_cli("train", "voice", work, *caps,
                                                         "--only", stage),
                                   ("acoustic", "vocoder"))
    assert acoustic.returncode == 0, acoustic.stderr
    assert vocoder.returncode == 0, vocoder.stderr
    # Each process trained its own stage only.
    assert "vocoder training" not in acoustic.stderr and "voice training" in acoustic.stderr
    assert "voice training" not in vocoder.stderr and "vocoder training" in vocoder.stderr
    assert (work / "voice" / "checkpoint.pt").exists() and (work / "voice" / "vocoder.pt").exists()
    assert not (work / "avatars").exists()
    steps = torch.load(work / "voice" / "checkpoint.pt", weights_only=True)["step"]
    done = run_cli("train", "voice", work, *caps, "--name", "reader")
    assert done.returncode == 0, done.stderr
    assert "resuming voice training" in done.stderr
    assert "resuming vocoder training" in done.stderr and "holds no avatar bundle" in done.stderr
    manifest = json.loads((work / "avatars" / "reader" / "manifest.json").read_text())
    assert "head" not in manifest and manifest["voice"]["steps"] == steps
    assert manifest["voice"]["vocoder"]["kind"] == "vocos"
    assert manifest["voice"]["vocoder"]["adapt_steps"] > 0
    # --vocoder-minutes is a hard cap: a stage its cap fits few steps of is not lengthened.
    assert {manifest["voice"]["plan"][s]["minutes"] for s in ("vocoder", "vocoder_adapt")} \
        == {0.05}
    out = tmp_path / "a.wav"
    assert run_cli("say", work / "avatars" / "reader", "Hello.", "-o", out).returncode == 0
    # The ci preset synthesises with Griffin-Lim: it has no vocoder to train alone.
    proc = run_cli("train", "voice", work, "--preset", "ci", "--only", "vocoder")
    assert proc.returncode == 2 and "no trained vocoder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_voice_trains_data_parallel_under_torchrun(bundle: Path, tmp_path: Path) -> None:
    """Two CPU processes (gloo) stand in for two GPUs: the acoustic model and both vocoder
    stages train on each process's own batches with the gradients averaged, the processes
    stop together at the caps, end with the same weights, and the first exports."""
    import os
    import re
    import subprocess
    import sys

    from tests.conftest import ROOT
    from training.voice.pack import pack

    work = tmp_path / "ddp"
    pack(bundle.parent.parent, work)
    torchrun = Path(sys.executable).parent / "torchrun"
    env = dict(os.environ, TWINCAST_PROGRESS="0", OMP_NUM_THREADS="1")
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29534",
                           "-m", "twincast.cli", "train", "voice", str(work), "--preset", "cpu",
                           "--max-minutes", "0.05", "--vocoder-minutes", "0.05",
                           "--name", "ddp"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 processes" in proc.stderr
    held = re.findall(r"process (\d) of 2: acoustic weights (\w+), vocoder weights (\w+)",
                      proc.stderr)
    assert sorted(r for r, _, _ in held) == ["0", "1"], proc.stderr[-3000:]
    # One model on both: the vocoder's segments are drawn per process, so without the
    # averaged gradients its weights differ (tried); the sample's few sentences make one
    # acoustic batch, the same on both, so that check shows the steps and rates agreed.
    assert len({w for _, w, _ in held}) == 1 and len({v for _, _, v in held}) == 1, held
    manifest = json.loads((work / "avatars" / "ddp" / "manifest.json").read_text())
    steps = torch.load(work / "voice" / "checkpoint.pt", weights_only=True)["step"]
    assert manifest["voice"]["steps"] == steps > 0
    assert manifest["voice"]["vocoder"]["adapt_steps"] > 0
    assert proc.stderr.count("voice added to") == 1  # the first process alone exported


def test_voice_weights_can_travel_in_half_precision(bundle: Path, tmp_path: Path) -> None:
    """scripts/half_voice.py (what the voice GPU check brings back): float16 weights, the
    manifest's digests rewritten, and the voice still loads and speaks nearly the same."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    from avatar.models.voice import encode
    from avatar.voice import Voice
    from tests.conftest import ROOT

    half = tmp_path / "half"
    shutil.copytree(bundle, half)
    proc = subprocess.run([sys.executable, "scripts/half_voice.py", str(half)], cwd=ROOT,
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((half / "manifest.json").read_text())
    assert manifest["voice"]["weights"] == "float16"
    weights = load_file(str(half / manifest["voice"]["file"]))
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
    text = "The weights travelled in half precision."
    said, frames = [], []
    for b in (bundle, half):
        voice = Voice.load(b)
        piece = next(iter(voice.frontend.pieces(text)))
        ids = encode(piece.phonemes, voice.model.cfg.marks)[0]
        with torch.no_grad():
            frames.append(voice.model.synthesise(torch.tensor([ids]), 1.0,
                                                 voice.duration_scale)[1].numpy())
        torch.manual_seed(0)  # Griffin-Lim (the ci voice's vocoder) starts from random phases
        said.append(voice.say(text))
    # Half-precision weights may round a duration that lies near a half frame the other
    # way; beyond that, the same symbols last as long and sound the same.
    assert np.abs(frames[0] - frames[1]).sum() <= 2
    a, b = said
    if np.array_equal(frames[0], frames[1]):
        # Compared as spectra: Griffin-Lim's phases drift apart from a rounding's worth of
        # difference (0.1-0.7 % of the waveform's energy between runs), its magnitudes not.
        def spectrum(x: np.ndarray) -> torch.Tensor:
            return torch.stft(torch.from_numpy(x), 1024, 256, window=torch.hann_window(1024),
                              return_complex=True).abs()

        assert len(a) == len(b)
        sa, sb = spectrum(a), spectrum(b)
        assert float((sa - sb).norm() / sa.norm()) < 0.06  # 1.0 % on the GRID voice


def test_voice_folder_takes_videos_and_a_tab_transcript(grid_train: Path, tmp_path: Path
                                                        ) -> None:
    """GRID's clips (videos, ``ID<TAB>text``) enrol a voice as LJ Speech's wavs do."""
    from avatar.errors import TwincastError
    from training.ingest import decode_audio
    from training.voice.features import find_audio, read_texts

    folder = tmp_path / "clips"
    folder.mkdir()
    for f in sorted(grid_train.glob("*.mpg"))[:2]:
        (folder / f.name).symlink_to(f)
    (folder / "notes.txt").write_text("not a recording")
    files = find_audio(folder)
    assert [f.suffix for f in files] == [".mpg", ".mpg"]
    texts = read_texts(grid_train.parent / "transcripts.tsv")
    assert texts[files[0].stem].split()[0] in {"bin", "lay", "place", "set"}
    audio = decode_audio(files[0], (16000,))[16000]
    assert 2.5 < len(audio) / 16000 < 3.5
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TwincastError, match="holds no recordings"):
        find_audio(empty)
