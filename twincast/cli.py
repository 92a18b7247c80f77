"""The ``twincast`` command line.

Subcommands import their modules only when they run, so ``twincast --help`` is instant and a
runtime-only command never loads training code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from avatar.errors import TwincastError

log = logging.getLogger("twincast")

EXTRA_OF = {"aiortc": "serve", "aiohttp": "serve", "prometheus_client": "serve",
            "ray": "cluster",
            "mediapipe": "train", "pocketsphinx": "train", "librosa": "train",
            "skimage": "train", "matplotlib": "train", "resemblyzer": "eval"}
"""Which install role (pyproject's optional dependencies) brings each optional module."""
FAULT_NAMES = ("renderer", "tts", "vanish", "sigterm", "disk_full", "killed_enrolment")
"""``bench faults``' faults (bench.faults.FAULTS; here so ``--help`` imports nothing)."""
PLAYOUT_DELAY_DEFAULT = "off"
"""``serve --playout-delay``: what a viewer's WebRTC stack is asked to hold a frame within."""
ROLE_OF = {"serve": "serve", "stream": "serve", "cluster": "cluster", "enrol": "train",
           "sample": "train", "eval": "eval"}
"""The install role each command needs: checked before it starts, so a command that cannot
finish leaves nothing half-made behind. ``train`` is not here: it also runs on a GPU machine
with torch alone, from a packed cache (scripts/gpu_check.sh)."""


def _missing_role(command: str) -> str | None:
    """The error for a command whose role's packages are not installed, else None."""
    from importlib.util import find_spec

    role = ROLE_OF.get(command)
    for module, extra in EXTRA_OF.items():
        if extra == role or (role == "eval" and extra == "train"):
            if find_spec(module) is None:
                return (f"'{command}' needs {module}, which this install lacks; install it "
                        f"with: pip install 'twincast[{role}]'")
    return None


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT (e.g. 512x512)") from None
    if w < 64 or h < 64 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"{text!r}: sides must be even and at least 64")
    return w, h


def _batches(text: str, flag: str = "--batches") -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise TwincastError(f"{flag} {text!r}: give counts like 1,4,16,64") from None
    if not values or min(values) < 1:
        raise TwincastError(f"{flag} {text!r}: counts must be at least 1")
    return values


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return v


def _count(text: str) -> int:
    """A whole number, 0 or more."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return v


def _playout_delay(text: str) -> str:
    """``off`` or the most milliseconds a viewer may hold a frame (a multiple of 10)."""
    if text == "off":
        return text
    try:
        ms = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give milliseconds (e.g. 100) or "
                                         "'off'") from None
    from streaming.playout_delay import PlayoutDelay

    try:  # the extension's own rule (range and unit), said once, in its module
        PlayoutDelay(0, ms)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    return text


def _playout_delay_config(text: str):  # noqa: ANN202 - PlayoutDelay | None, lazily imported
    from streaming.playout_delay import PlayoutDelay

    return None if text == "off" else PlayoutDelay(0, int(text))


def _label_flags(p: argparse.ArgumentParser) -> None:
    """The disclosure label's flags (``avatar.label``), the same on every output command."""
    p.add_argument("--label", default="AI-generated", metavar="TEXT",
                   help="the disclosure shown in a corner of every frame (AI-generated)")
    p.add_argument("--label-corner", default="bottom-right",
                   choices=("top-left", "top-right", "bottom-left", "bottom-right"))
    p.add_argument("--no-label", action="store_true",
                   help="no visible disclosure (you then disclose the video is synthetic "
                        "some other way)")
    _watermark_flag(p)


def _llm_flags(p: argparse.ArgumentParser) -> None:
    """The operator's LLM that answers questions (``streaming.llm``)."""
    p.add_argument("--llm", metavar="URL",
                   help="an OpenAI-compatible chat API that answers viewers' questions "
                        "(ask), e.g. http://127.0.0.1:8081/v1 (llama.cpp, vLLM, Ollama)")
    p.add_argument("--llm-model", metavar="NAME", help="the model to ask (with --llm)")
    p.add_argument("--llm-key-env", metavar="VAR",
                   help="the environment variable holding the LLM's API key")
    p.add_argument("--llm-system", metavar="TEXT",
                   help="the system prompt ({name} is the avatar's name; default: answer "
                        "in one to three short spoken sentences)")
    p.add_argument("--knowledge", type=Path, metavar="FILE",
                   help="a product sheet or FAQ (Markdown or TOML) the LLM answers from")
    p.add_argument("--stt", metavar="URL",
                   help="conversation mode's recogniser: an OpenAI-compatible transcription "
                        "API (whisper.cpp's server, vLLM, ...); default: pocketsphinx here")
    p.add_argument("--stt-model", metavar="NAME", help="the transcription model (with --stt)")
    p.add_argument("--stt-key-env", metavar="VAR",
                   help="the environment variable holding the transcription API's key")


def _stt_config(args: argparse.Namespace):  # noqa: ANN202 - TranscriptionAPI | None
    from streaming.listening import TranscriptionAPI

    if args.stt is None:
        if args.stt_model or args.stt_key_env:
            raise TwincastError("--stt-model and --stt-key-env go with --stt URL")
        return None
    if not args.stt.startswith(("http://", "https://")):
        raise TwincastError(f"--stt {args.stt!r}: an http:// or https:// URL of an "
                            "OpenAI-compatible API, e.g. http://127.0.0.1:8082/v1")
    if not args.stt_model:
        raise TwincastError("--stt needs --stt-model NAME (the model the API serves)")
    key = None
    if args.stt_key_env:
        key = os.environ.get(args.stt_key_env)
        if not key:
            raise TwincastError(f"--stt-key-env {args.stt_key_env}: that variable is not set")
    return TranscriptionAPI(args.stt, args.stt_model, key)


def _llm_config(args: argparse.Namespace):  # noqa: ANN202 - streaming.llm.LLMConfig | None
    from streaming.llm import LLMConfig, read_knowledge

    if args.llm is None:
        if args.llm_model or args.knowledge or args.llm_system or args.llm_key_env:
            raise TwincastError("--llm-model, --llm-system, --llm-key-env and --knowledge "
                                "go with --llm URL")
        return None
    if not args.llm.startswith(("http://", "https://")):
        raise TwincastError(f"--llm {args.llm!r}: an http:// or https:// URL of an "
                            "OpenAI-compatible API, e.g. http://127.0.0.1:8081/v1")
    if not args.llm_model:
        raise TwincastError("--llm needs --llm-model NAME (the model the API serves)")
    cfg = LLMConfig(url=args.llm, model=args.llm_model, key_env=args.llm_key_env,
                    knowledge=read_knowledge(args.knowledge) if args.knowledge else "")
    if args.llm_system:
        cfg = dataclasses.replace(cfg, system=args.llm_system)
    cfg.headers()  # a key variable that is not set fails now, not at the first question
    return cfg


def _consent_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-unconsented", action="store_true",
                   help="serve avatars whose enrolment verified no consent recording (you "
                        "hold the person's consent some other way); logged, and shown in "
                        "/v1/avatars and /metrics")


def _signing_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sign-cert", type=Path, metavar="PEM",
                   help="certificate chain for the file's Content Credentials (C2PA), signing "
                        "certificate first (default: twincast's own operator key)")
    p.add_argument("--sign-key", type=Path, metavar="PEM", help="its private key")
    p.add_argument("--no-c2pa", action="store_true",
                   help="write no signed Content Credentials into the file")


def _provenance(args: argparse.Namespace):  # noqa: ANN202 - avatar.provenance.Provenance
    from avatar.credentials import SigningConfig
    from avatar.label import LabelConfig
    from avatar.provenance import Provenance

    for flag in ("sign_cert", "sign_key"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            raise TwincastError(f"--{flag.replace('_', '-')} {path}: no such file")
    if args.no_c2pa:
        log.warning("writing no Content Credentials (--no-c2pa)")
    label = _label_config(args) if hasattr(args, "label") else LabelConfig()
    return Provenance(label=label, watermark=_watermark_config(args),
                      signing=SigningConfig(enabled=not args.no_c2pa, cert=args.sign_cert,
                                            key=args.sign_key))


def _watermark_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-watermark", action="store_true",
                   help="no invisible mark (bundle id and time) in the frames and the voice; "
                        "`twincast verify` then cannot trace copies back")


def _watermark_config(args: argparse.Namespace):  # noqa: ANN202 - avatar.watermark.WatermarkConfig
    from avatar.watermark import WatermarkConfig

    if args.no_watermark:
        log.warning("the invisible watermark is off (--no-watermark)")
    return WatermarkConfig(enabled=not args.no_watermark)


def _label_config(args: argparse.Namespace):  # noqa: ANN202 - avatar.label.LabelConfig
    from avatar.label import LabelConfig

    try:
        return LabelConfig(text=args.label, corner=args.label_corner,
                           enabled=not args.no_label)
    except ValueError as e:
        raise TwincastError(f"--label: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    from training.presets import names  # the standard library and one TOML file

    preset_names = names()
    p = argparse.ArgumentParser(prog="twincast", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="debug logging from twincast (-vv: from the libraries too)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("sample", help="write synthetic presenter footage to enrol from")
    s.add_argument("-o", "--out", type=Path, default=Path("build/sample"),
                   help="output folder (default: build/sample)")
    s.add_argument("--minutes", type=_positive, default=2.0, help="length (default 2)")
    s.add_argument("--size", type=_size, default=(512, 512), help="WIDTHxHEIGHT (512x512)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--consent", type=Path, metavar="WORKDIR",
                   help="instead of footage, OUT/consent.mp4: the presenter reading the "
                        "consent statement `twincast consent` issued in WORKDIR")
    s.set_defaults(func=cmd_sample)

    c = sub.add_parser("consent", help="issue the one-time consent statement the person "
                                       "records on camera before enrolment")
    c.add_argument("--workdir", type=Path, required=True,
                   help="the enrolment's work folder (the same --workdir as enrol)")
    c.add_argument("--name", required=True, help="the person's name, as they will say it")
    c.add_argument("--valid-minutes", type=_positive, default=30.0,
                   help="how long the code stays valid (default 30)")
    c.set_defaults(func=cmd_consent)

    e = sub.add_parser("enrol", help="learn an avatar from footage: features, talking "
                       "head, bundle")
    e.add_argument("footage", nargs="*", type=Path, help="video files or folders of clips")
    e.add_argument("--workdir", type=Path, required=True, help="where the cache is written")
    e.add_argument("--transcript", type=Path,
                   help="plain text (one clip) or 'clip<TAB>text' lines (a folder)")
    e.add_argument("--preset", choices=preset_names, default="cpu",
                   help="ci: tiny and fast, for tests; cpu (default); gpu")
    e.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    e.add_argument("--ray", metavar="ADDRESS",
                   help="run the features stage's units as tasks on this Ray cluster (auto: "
                        "the one `ray start` made here); footage and --workdir must be on a "
                        "file system every node mounts at the same path")
    e.add_argument("--strict", action="store_true", help="treat quality warnings as errors")
    e.add_argument("--device", default="cpu", help="training device: cpu, cuda:0, ...")
    e.add_argument("--name", help="avatar name (default: the footage's name)")
    e.add_argument("--voice", type=Path, metavar="AUDIO_DIR",
                   help="a folder of extra recordings for the voice alone (with no footage, "
                   "the avatar is a voice only)")
    e.add_argument("--voice-transcript", type=Path, metavar="FILE",
                   help="'ID|text' or 'ID|raw|normalized' lines for --voice (without footage, "
                   "--transcript works too)")
    e.add_argument("--features-only", action="store_true",
                   help="stop after the enrolment cache (no training, no bundle)")
    e.add_argument("--voice-minutes", type=_positive, metavar="N",
                   help="cap the voice's acoustic model at N minutes instead of the preset's "
                        "(on a host too slow for the preset's cap, enrol says how long)")
    e.add_argument("--consent", type=Path, metavar="CLIP",
                   help="the person reading the statement `twincast consent` issued, on "
                        "camera: checked against the footage (words, code, voice, face) "
                        "before anything is trained; without it the bundle is unconsented")
    e.set_defaults(func=cmd_enrol)

    t = sub.add_parser("train", help="train one stage again on an existing enrolment")
    tsub = t.add_subparsers(dest="stage", required=True, metavar="STAGE")
    th = tsub.add_parser("head", help="talking head from WORKDIR/features, then export "
                         "(works under torchrun for several GPUs)")
    th.add_argument("workdir", type=Path)
    th.add_argument("--preset", choices=preset_names, default="cpu")
    th.add_argument("--device", default="cpu")
    th.add_argument("--name", help="avatar name (default: the first clip's id)")
    th.add_argument("--max-minutes", type=_positive, help="cap the training's wall time")
    mode = th.add_mutually_exclusive_group()
    mode.add_argument("--no-export", action="store_true",
                      help="train only (e.g. on a GPU machine without the source footage)")
    mode.add_argument("--export-only", action="store_true",
                      help="export WORKDIR/head/generator.safetensors, trained earlier")
    th.set_defaults(func=cmd_train_head)
    tv = tsub.add_parser("voice", help="voice from WORKDIR/features, added to the "
                         "enrolment's bundle (works under torchrun for several GPUs)")
    tv.add_argument("workdir", type=Path)
    tv.add_argument("--preset", choices=preset_names, default="cpu")
    tv.add_argument("--device", default="cpu")
    tv.add_argument("--name", help="which bundle in WORKDIR/avatars (if several), or the "
                    "name of a new voice-only one (where there is none)")
    tv.add_argument("--max-minutes", type=_positive,
                    help="cap the acoustic model's wall time (the vocoder has its own)")
    tv.add_argument("--vocoder-minutes", type=_positive,
                    help="cap each of the vocoder's two stages' wall time (a hard cap: "
                    "without it a slow host lengthens a stage to fit its floor of steps)")
    tv.add_argument("--only", choices=("acoustic", "vocoder"),
                    help="train one stage alone and export nothing: run one process of each "
                    "side by side, then once more without --only to finish and export")
    tv.set_defaults(func=cmd_train_voice)

    tm = tsub.add_parser("motion", help="(re)build the motion bank of the enrolment's bundle "
                         "from WORKDIR/features and the source footage")
    tm.add_argument("workdir", type=Path)
    tm.add_argument("--name", help="which bundle in WORKDIR/avatars (if several)")
    tm.set_defaults(func=cmd_train_motion)

    tt = tsub.add_parser("texture", help="(re)build the texture bank (the person's own mouth "
                         "detail) of the enrolment's bundle from WORKDIR/features")
    tt.add_argument("workdir", type=Path)
    tt.add_argument("--name", help="which bundle in WORKDIR/avatars (if several)")
    tt.set_defaults(func=cmd_train_texture)

    tc = tsub.add_parser("colour", help="(re)measure the painted mouth's colour cast of the "
                         "enrolment's bundle on WORKDIR/features (rendering takes it off)")
    tc.add_argument("workdir", type=Path)
    tc.add_argument("--name", help="which bundle in WORKDIR/avatars (if several)")
    tc.set_defaults(func=cmd_train_colour)

    tr = tsub.add_parser("refine", help="(re)train the refiner (the person-specific detail "
                         "stage on the paint) of the enrolment's bundle on WORKDIR/features, "
                         "and measure the colour cast on its paint")
    tr.add_argument("workdir", type=Path)
    tr.add_argument("--name", help="which bundle in WORKDIR/avatars (if several)")
    tr.add_argument("--preset", default="cpu", help="whose refiner steps and cap (default cpu)")
    tr.add_argument("--steps", type=int, help="refiner steps (default: the preset's)")
    tr.add_argument("--max-minutes", type=float, help="cap on its training (default: the "
                    "preset's)")
    tr.add_argument("--device", default="cpu", help="where the generator paints and the "
                    "refiner trains: cpu, cuda:0, ...")
    tr.add_argument("--scale", type=int, choices=(1, 2), help="work at the paint's full "
                    "side (1) or folded to half of it (2: a quarter of the cost a frame); "
                    "default: 2 where the paint is over 128 px")
    tr.set_defaults(func=cmd_train_refine)

    sy = sub.add_parser("say", help="speak text in the avatar's voice to a .wav file")
    sy.add_argument("bundle", type=Path)
    sy.add_argument("text", help="what to say")
    sy.add_argument("-o", "--out", type=Path, required=True, help="output .wav")
    sy.add_argument("--pace", type=_positive, default=1.0, help="speaking rate (1 = natural)")
    sy.add_argument("--device", default="cpu")
    _watermark_flag(sy)
    _signing_flags(sy)
    sy.set_defaults(func=cmd_say)

    vf = sub.add_parser("verify", help="find twincast's invisible marks in a video, audio "
                                       "file or stream: which avatar made it, and when")
    vf.add_argument("source", metavar="FILE_OR_URL",
                    help="a video or audio file, or a stream's URL (http(s), rtmp, ...)")
    vf.add_argument("--seconds", type=_positive, default=None,
                    help="read only this much from the start (default: all of a file, "
                         "60 s of a URL)")
    vf.add_argument("--json", action="store_true", help="print the full reading as JSON")
    vf.set_defaults(func=cmd_verify)

    r = sub.add_parser("render", help="render an avatar speaking audio or text to a video")
    r.add_argument("bundle", type=Path, help="avatar bundle folder (WORKDIR/avatars/NAME)")
    what = r.add_mutually_exclusive_group(required=True)
    what.add_argument("--audio", type=Path, help="speech, any format and rate")
    what.add_argument("--text", help="text, said in the avatar's voice")
    what.add_argument("--show", type=Path, help="a show file (TOML): segments to say, pauses")
    r.add_argument("--pace", type=_positive, default=1.0, help="speaking rate for --text")
    r.add_argument("-o", "--out", type=Path, required=True, help="output .mp4")
    r.add_argument("--device", default="cpu")
    r.add_argument("--batch", type=int, default=16, help="frames per model call (16)")
    r.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="render precision (auto: bf16 where the device has it natively)")
    _label_flags(r)
    _signing_flags(r)
    r.set_defaults(func=cmd_render)

    sv = sub.add_parser("serve", help="the realtime WebRTC server")
    sv.add_argument("bundles", nargs="+", type=Path, help="avatar bundles to offer")
    sv.add_argument("--devices", default="cpu",
                    help="comma-separated render devices, e.g. cpu or cuda:0,cuda:1")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument("--token", help="API bearer token (default: TWINCAST_TOKEN or generated)")
    sv.add_argument("--max-sessions", type=int, default=8)
    sv.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="render precision (auto: bf16 where the device has it natively)")
    sv.add_argument("--render-threads", type=int, default=0,
                    help="CPU threads each CPU render lane uses (0: half the cores)")
    sv.add_argument("--host-share", type=float, default=0.9, metavar="SHARE",
                    help="admit another session only while the whole host's measured CPU "
                    "use stays under this share of its cores (0: no check)")
    sv.add_argument("--max-batch", type=int, default=16,
                    help="most frames a lane renders in one model call")
    sv.add_argument("--compositing", choices=("cpu", "device"), default="cpu",
                    help="put the painted mouth into its frame with OpenCV on the CPU, or "
                    "with torch on the render device, a batch in one pass (for GPU lanes)")
    sv.add_argument("--lost-share", type=float, default=0.05, metavar="SHARE",
                    help="admit another session only while the open sessions lost under this "
                    "share of their frames over the last 30 s (0: no check)")
    sv.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                    help="a web origin whose pages may call the API (repeatable; * for any)")
    sv.add_argument("--rtmp-allow", action="append", default=[], metavar="HOST|NETWORK",
                    help="an RTMP ingest host or network API callers may stream to although "
                         "it is not a public address (repeatable; * for any)")
    sv.add_argument("--playout-delay", type=_playout_delay, default=PLAYOUT_DELAY_DEFAULT,
                    metavar="MS|off", help="the longest a viewer's WebRTC stack may hold a "
                    "video frame before showing it (the playout-delay RTP extension; "
                    f"default {PLAYOUT_DELAY_DEFAULT}; off: the viewer's jitter buffer "
                    "decides)")
    sv.add_argument("--log-format", choices=("text", "json"), default="text",
                    help="json: one JSON object per log line, for log collectors")
    _consent_flag(sv)
    _llm_flags(sv)
    _label_flags(sv)
    sv.set_defaults(func=cmd_serve)

    cl = sub.add_parser("cluster", help="serve on a Ray cluster: a worker per device lane per "
                        "node, one ingress placing sessions by measured capacity")
    cl.add_argument("bundles", nargs="+", type=Path,
                    help="avatar bundles to offer (a path every node sees)")
    cl.add_argument("--ray", default="auto", metavar="ADDRESS",
                    help="the Ray cluster to join (auto: the one `ray start` made here)")
    cl.add_argument("--devices", default="cpu",
                    help="the lanes each node runs, one worker each: cpu, cuda:0, ...")
    cl.add_argument("--host", default="127.0.0.1", help="the ingress's address")
    cl.add_argument("--port", type=int, default=8000, help="the ingress's port")
    cl.add_argument("--token", help="API bearer token (default: TWINCAST_TOKEN or generated)")
    cl.add_argument("--max-sessions", type=int, default=8, help="per worker")
    cl.add_argument("--render-threads", type=int, default=1,
                    help="CPU threads each CPU worker renders with")
    cl.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                    help="a web origin whose pages may call the API (repeatable; * for any)")
    cl.add_argument("--rollout", action="store_true",
                    help="roll BUNDLE... out onto the running cluster's workers, lane by lane, "
                         "without ending a session, then exit (the same --token)")
    cl.add_argument("--drain-timeout", type=float, default=3600.0, metavar="S",
                    help="with --rollout: how long an old worker may keep its sessions "
                         "(default 3600)")
    _consent_flag(cl)
    cl.set_defaults(func=cmd_cluster)

    st = sub.add_parser("stream", help="push the avatar live to an RTMP(S) ingest, with the "
                        "server's API for injecting text")
    st.add_argument("bundle", type=Path)
    st.add_argument("--rtmp", required=True, help="ingest URL, rtmp://host/app/STREAM-KEY")
    st.add_argument("--show", type=Path, help="a show file (TOML) to run unattended")
    st.add_argument("--size", type=_size, default=(1280, 720), help="WIDTHxHEIGHT (1280x720)")
    st.add_argument("--video-kbps", type=int, default=2500)
    st.add_argument("--audio-kbps", type=int, default=128)
    st.add_argument("--keyframe-s", type=_positive, default=2.0,
                    help="seconds between keyframes (2)")
    st.add_argument("--key", metavar="RRGGBB", help="replace the background with this "
                    "colour for chroma keying, e.g. 00ff00")
    st.add_argument("--devices", default="cpu")
    st.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="render precision (auto: bf16 where the device has it natively)")
    st.add_argument("--host", default="127.0.0.1")
    st.add_argument("--port", type=int, default=8080)
    st.add_argument("--token", help="API bearer token (default: TWINCAST_TOKEN or generated)")
    st.add_argument("--log-format", choices=("text", "json"), default="text")
    _consent_flag(st)
    _llm_flags(st)
    _label_flags(st)
    st.set_defaults(func=cmd_stream)

    ev = sub.add_parser("eval", help="measure an avatar on held-out footage")
    evsub = ev.add_subparsers(dest="eval", required=True, metavar="WHAT")
    eh = evsub.add_parser("head", help="lip sync over the idle footage, with a leakage control")
    eh.add_argument("bundle", type=Path)
    eh.add_argument("--footage", type=Path, nargs="+", required=True,
                    help="held-out clips (never ones the avatar was trained on)")
    eh.add_argument("-o", "--out", type=Path, help="report folder (default: BUNDLE/../eval-head)")
    eh.add_argument("--device", default="cpu")
    eh.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="render precision (auto: bf16 where the device has it natively)")
    eh.add_argument("--detail", choices=("keep", "off"), default="keep",
                    help="keep the frame's own fine detail where the paint agrees with it "
                         "(keep, as rendering does) or composite the paint as it is (off)")
    eh.add_argument("--texture", choices=("keep", "off"), default="keep",
                    help="lend the painted mouth fine detail from the person's own frames "
                         "(keep, as rendering does, where the bundle has a texture bank) or "
                         "not (off)")
    eh.add_argument("--cast", choices=("keep", "off"), default="keep",
                    help="take the paint's measured colour cast off (keep, as rendering "
                         "does, where the bundle has the measurement) or not (off)")
    eh.add_argument("--refine", choices=("keep", "off"), default="keep",
                    help="run the bundle's refiner on the paint (keep, as rendering does, "
                         "where the bundle has one) or not (off)")
    eh.set_defaults(func=cmd_eval_head)
    em = evsub.add_parser("motion", help="head motion, seams and repetition of the motion "
                          "bank's walk, driven by held-out clips' audio")
    em.add_argument("bundle", type=Path)
    em.add_argument("--footage", type=Path, nargs="+", required=True,
                    help="held-out clips of the same person (their audio drives the walk, "
                    "their head motion is the reference)")
    em.add_argument("-o", "--out", type=Path, required=True, help="folder for the report")
    em.add_argument("--device", default="cpu")
    em.add_argument("--passes", type=int, default=3,
                    help="times the clips are played, each pass in a new order")
    em.add_argument("--seed", type=int, default=0)
    em.add_argument("--no-video", action="store_true", help="skip writing motion.mp4")
    em.set_defaults(func=cmd_eval_motion)
    evv = evsub.add_parser("voice", help="intelligibility, likeness and timing of the voice "
                           "on held-out recordings")
    evv.add_argument("bundle", type=Path)
    evv.add_argument("--data", type=Path, required=True,
                     help="folder of held-out recordings (audio or video)")
    evv.add_argument("--transcript", type=Path,
                     help="their text (default: metadata.csv or transcripts.tsv beside them)")
    evv.add_argument("-o", "--out", type=Path,
                     help="report folder (default: BUNDLE/../eval-voice-NAME)")
    evv.add_argument("--device", default="cpu")
    evv.add_argument("--limit", type=int,
                     help="only the first N recordings (and N unseen sentences)")
    evv.add_argument("--no-unseen", action="store_true",
                     help="skip the sentences unlike the training text")
    evv.add_argument("--whole-transcripts", action="store_true",
                     help="score every recording against its whole transcript, even one "
                     "that stops early (as figures measured before the check were)")
    evv.set_defaults(func=cmd_eval_voice)

    b = sub.add_parser("bench", help="measure speed and memory; prints JSON")
    bsub = b.add_subparsers(dest="bench", required=True, metavar="WHAT")
    bf = bsub.add_parser("features", help="the enrolment features stage")
    bf.add_argument("footage", nargs="*", type=Path,
                    help="footage (default: a fresh 1-minute synthetic sample)")
    bf.add_argument("--transcript", type=Path)
    bf.add_argument("--workers", type=int, default=2)
    bf.add_argument("--workdir", type=Path, help="keep the cache here (default: a temp dir)")
    bf.set_defaults(func=cmd_bench_features)
    br = bsub.add_parser("render", help="frames/s of the batched renderer")
    br.add_argument("bundle", type=Path)
    br.add_argument("--device", default="cpu")
    br.add_argument("--seconds", type=_positive, default=3.0, help="per batch size (3)")
    br.add_argument("--batches", default="1,4,16,64",
                    help="comma-separated batch sizes (1,4,16,64)")
    br.add_argument("--preset", choices=preset_names,
                    help="time a fresh model of this preset's size over the bundle's idle "
                    "footage instead of the bundle's own model")
    br.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="render precision (auto: bf16 where the device has it natively)")
    br.add_argument("--model-size", type=int, help="time a fresh model painting this many "
                    "pixels (a multiple of 16) over the bundle's idle footage")
    br.add_argument("--compositing", choices=("cpu", "device"), default="cpu",
                    help="put the mouth into the frame with OpenCV on the CPU (default) or "
                    "with torch on the model's device")
    br.add_argument("--motion", action="store_true",
                    help="each frame from its own session's walk through the motion bank "
                    "(decoded, blended, prepared per frame) instead of the idle loop")
    br.add_argument("--refiner", choices=("keep", "off", "fresh"), default="keep",
                    help="keep the bundle's refiner (where its own model renders), render "
                    "without one, or time a fresh one (its cost at any --model-size)")
    br.add_argument("--threads", type=_count, default=0,
                    help="CPU threads the model calls use (0: torch's default, every core; "
                    "`serve` gives its renderer half the cores)")
    br.set_defaults(func=cmd_bench_render)
    bst = bsub.add_parser("stream", help="CPU cost and say-to-mouth latency of one RTMP "
                          "stream (needs nginx with its RTMP module)")
    bst.add_argument("bundle", type=Path)
    bst.add_argument("--sizes", default="1280x720,1920x1080", help="output sizes to measure")
    bst.add_argument("--idle-seconds", type=_positive, default=10.0)
    bst.set_defaults(func=cmd_bench_stream)

    bs = bsub.add_parser("serve", help="the server with N real WebRTC clients on loopback")
    bs.add_argument("bundle", type=Path)
    bs.add_argument("--sessions", type=int, default=1)
    bs.add_argument("--seconds", type=_positive, default=20.0, help="per client (20)")
    bs.add_argument("--devices", default="cpu", help="render lanes, e.g. cpu or cpu,cpu")
    bs.add_argument("--max-batch", type=int, default=16,
                    help="frames per model call (1 turns cross-session batching off)")
    bs.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="render precision (auto: bf16 where the device has it natively)")
    bs.set_defaults(func=cmd_bench_serve)
    bl = bsub.add_parser("lanes", help="speaking sessions a device's render lane holds "
                         "under 1 %% late frames (the scheduler alone, no WebRTC)")
    bl.add_argument("bundle", type=Path)
    bl.add_argument("--devices", default="cpu", help="render lanes, e.g. cuda:0 or cpu")
    bl.add_argument("--sessions", default="1,2,4,8,16,24,32,48,64",
                    help="counts tried in rising order until 5 %% of frames are late")
    bl.add_argument("--seconds", type=_positive, default=10.0, help="per count (10)")
    bl.add_argument("--max-batch", type=int, default=16, help="frames per model call (16)")
    bl.add_argument("--preset", choices=preset_names,
                    help="a fresh model of this preset's size instead of the bundle's")
    bl.add_argument("--model-size", type=int, help="a fresh model painting this many pixels")
    bl.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    bl.add_argument("--compositing", choices=("cpu", "device"), default="cpu",
                    help="as bench render's")
    bl.add_argument("--motion", action="store_true", help="each session walks the motion "
                    "bank as live ones do (its decoding and preparing counted)")
    bl.add_argument("--encode", action="store_true", help="also VP8-encode every session's "
                    "frames on this machine's CPUs, as WebRTC senders do (needs PyAV)")
    bl.set_defaults(func=cmd_bench_lanes)
    bk = bsub.add_parser("soak", help="hours under load: memory, late frames, descriptors "
                         "and threads over time")
    bk.add_argument("bundle", type=Path)
    bk.add_argument("--minutes", type=_positive, default=60.0)
    bk.add_argument("--window-seconds", type=_positive, default=300.0,
                    help="late frames are counted per window (300)")
    bk.add_argument("--churn-seconds", type=_positive, default=60.0,
                    help="a third viewer comes and goes this often (60)")
    bk.set_defaults(func=cmd_bench_soak)
    bf = bsub.add_parser("faults", help="inject faults (renderer, voice, vanishing client, "
                         "SIGTERM, full disk, killed enrolment) and say what each cost")
    bf.add_argument("bundle", type=Path, help="an avatar with a voice")
    bf.add_argument("--faults", default=",".join(FAULT_NAMES),
                    help=f"comma-separated, of {', '.join(FAULT_NAMES)} (all)")
    bf.add_argument("--data", type=Path, default=Path("../shared/data/grid_s1/train"),
                    help="a folder of .mpg clips for the enrolment faults")
    bf.set_defaults(func=cmd_bench_faults)
    bw = bsub.add_parser("watermark", help="the invisible mark through VP8, H.264, rescales, "
                         "crops, Opus and AAC: bit accuracy, detection, false positives, cost")
    bw.add_argument("bundle", type=Path)
    bw.add_argument("--speech", type=Path, nargs="+",
                    default=[Path("../shared/data/grid_s1/train")],
                    help="what the avatar says: audio or video files, or folders of them, "
                         "looped to --minutes (GRID's train clips)")
    bw.add_argument("--minutes", type=_positive, default=5.0, help="output marked (5)")
    bw.add_argument("--window-seconds", type=_positive, default=20.0,
                    help="how much of a copy verify is given for the detection rate (20)")
    bw.add_argument("--unmarked-video", type=Path, nargs="*",
                    default=[Path("../shared/data/grid_s1/train"),
                             Path("../shared/data/grid_s1/eval")],
                    help="real footage never marked, for false positives (all of GRID)")
    bw.add_argument("--unmarked-audio", type=Path, nargs="*",
                    default=[Path("../shared/data/ljspeech/train")],
                    help="real speech never marked, for false positives (LJSpeech train)")
    bw.add_argument("--paths", default="",
                    help="comma-separated: only these copy paths (all)")
    bw.add_argument("-o", "--out", type=Path, help="also write the JSON here")
    bw.set_defaults(func=cmd_bench_watermark)
    bc = bsub.add_parser("consent", help="the consent check's decisions on the synthetic "
                         "sample and the real recordings in ../shared/data")
    bc.add_argument("--codes", type=int, default=12,
                    help="statements the sample presenter reads (12)")
    bc.add_argument("--grid-sets", type=int, default=10,
                    help="GRID recordings of four held-out sentences (10)")
    bc.add_argument("--lj", type=int, default=20, help="LJ Speech recordings (20)")
    bc.add_argument("-o", "--out", type=Path, help="also write the JSON here")
    bc.set_defaults(func=cmd_bench_consent)
    bv = bsub.add_parser("voice", help="real-time factor and first-chunk latency of the voice")
    bv.add_argument("bundle", type=Path)
    bv.add_argument("--device", default="cpu")
    bv.add_argument("--repeats", type=int, default=7, help="runs per figure (7)")
    bv.set_defaults(func=cmd_bench_voice)
    bq = bsub.add_parser("ask", help="questions answered by a real LLM, timed at a WebRTC "
                         "viewer; chat over IRC; moderation")
    bq.add_argument("bundle", type=Path)
    bq.add_argument("--questions", type=int, default=8, help="questions asked (8)")
    bq.add_argument("--chat-questions", type=int, default=3,
                    help="questions posted through an IRC channel (3; needs ngircd)")
    bq.add_argument("--llm", default=None, help="the OpenAI-compatible API's base URL, or "
                    "'scripted' (a fixed reply at once, no CPU: twincast's part alone); "
                    "default: SmolLM2-135M-Instruct from bench.llm_server, started here")
    bq.add_argument("--llm-model", default="SmolLM2-135M-Instruct")
    bq.add_argument("--llm-nice", type=int, default=19, help="the started model's CPU "
                    "priority (19: yields to twincast, as on a host of its own; 0: equal)")
    bq.add_argument("--viewer", choices=("aiortc", "browser"), default="aiortc",
                    help="who watches: an aiortc client (default; times sound and picture) "
                    "or a headless chromium on the server's page (the picture as it "
                    "is put on screen, the sound as it is played; needs chromium)")
    bq.add_argument("--playout-delay", type=_playout_delay, default=PLAYOUT_DELAY_DEFAULT,
                    metavar="MS|off", help="the server's --playout-delay (default "
                    f"{PLAYOUT_DELAY_DEFAULT})")
    bq.add_argument("--server-log", type=Path, default=None, metavar="PATH",
                    help="keep the server's log here, its debug lines included (each "
                    "sentence's start traced: synthesis, start margin)")
    bq.set_defaults(func=cmd_bench_ask)
    bc = bsub.add_parser("cluster", help="one server against a Ray cluster of two nodes on "
                         "this machine: latency at a viewer, placement, losing a node")
    bc.add_argument("bundle", type=Path)
    bc.add_argument("--says", type=int, default=8, help="sentences timed on each, sent by "
                    "HTTP and on the data channel in turn (8)")
    bc.add_argument("--hold", default="2,3", metavar="N,N",
                    help="numbers of talking sessions whose late frames are measured on each "
                         "(2,3)")
    bc.add_argument("--rounds", type=int, default=2,
                    help="rounds of the server beside the running cluster and the cluster, "
                         "measured in turn (2)")
    bc.set_defaults(func=cmd_bench_cluster)
    bcf = bsub.add_parser("cluster-features", help="the features stage locally and as Ray "
                          "tasks on two nodes on this machine: time, same cache bytes")
    bcf.add_argument("footage", nargs="+", type=Path)
    bcf.add_argument("--transcript", type=Path)
    bcf.add_argument("--preset", choices=preset_names, default="cpu")
    bcf.set_defaults(func=cmd_bench_cluster_features)
    ba = bsub.add_parser("align", help="word-boundary error of an enrolment's alignment")
    ba.add_argument("features", type=Path, help="WORKDIR/features of an enrolment")
    ba.add_argument("--truth", type=Path, required=True,
                    help="folder of GRID .align files, or a sample's words.json")
    ba.set_defaults(func=cmd_bench_align)
    return p


def cmd_sample(args: argparse.Namespace) -> int:
    from training.sample.presenter import SampleConfig, write_sample

    cfg = SampleConfig(minutes=args.minutes, width=args.size[0], height=args.size[1],
                       seed=args.seed)
    if args.consent is not None:
        from training.consent import load_challenge

        ch = load_challenge(args.consent)
        out = write_sample(args.out, dataclasses.replace(cfg, read=(ch.spoken,),
                                                         name="consent"))
        log.info("consent recording written: %s (%s)", out.video, ch.text)
        return 0
    out = write_sample(args.out, cfg)
    log.info("sample written: %s (transcript %s)", out.video, out.transcript)
    return 0


def cmd_consent(args: argparse.Namespace) -> int:
    from datetime import datetime

    from training.consent import issue

    ch = issue(args.workdir, args.name, args.valid_minutes)
    until = datetime.fromtimestamp(ch.expires).astimezone().strftime("%H:%M %Z")
    sys.stdout.write(
        f"Record yourself on camera, in the same setting as your footage, saying:\n\n"
        f"    {ch.text}\n\n"
        f"The code is valid until {until}. Then enrol with the recording:\n"
        f"    twincast enrol FOOTAGE --workdir {args.workdir} --consent RECORDING ...\n")
    return 0


def _features_config(workers: int, preset: str = "cpu"):  # noqa: ANN202 - lazy imports
    from training.config import features_preset

    if workers < 0:
        raise TwincastError(f"--workers {workers}: must be 0 or more")
    return features_preset(preset, workers)


def cmd_enrol(args: argparse.Namespace) -> int:
    from training.enrol import enrol

    if args.workers < 0:
        raise TwincastError(f"--workers {args.workers}: must be 0 or more")
    transcript, voice_transcript = args.transcript, args.voice_transcript
    if args.voice and not args.footage and voice_transcript is None:
        transcript, voice_transcript = None, args.transcript
    out = enrol(args.footage, args.workdir, args.preset, args.workers,
                transcript=transcript, strict=args.strict, device=args.device,
                name=args.name, features_only=args.features_only, voice_dir=args.voice,
                voice_transcript=voice_transcript, consent_clip=args.consent,
                ray_address=args.ray, voice_minutes=args.voice_minutes)
    if "features" in out:
        sys.stdout.write((out["features"] / "report.txt").read_text())
        log.info("enrolment cache: %s", out["features"])
    if "voice_features" in out:
        log.info("voice cache: %s", out["voice_features"])
    if "bundle" in out:
        trained = [f"{k.split('_')[0]} trained in {out[k]:.0f} s"
                   for k in ("head_seconds", "voice_seconds") if k in out]
        log.info("avatar bundle: %s (%s)", out["bundle"], ", ".join(trained))
    _say_plan(out)
    return 0


def _say_plan(out: dict) -> None:
    """The last word of a training: how much of its plan ran and what that costs."""
    from training.head.plan import describe
    from training.voice.plan import describe as describe_voice

    voice = out.get("voice_plan")
    if voice:
        line = describe_voice(voice)
        (log.info if "whole plan" in line else log.warning)("%s", line)
    plan = out.get("head_plan")
    if plan:
        line = describe(plan)
        if plan["generator_share"] < 0.999:
            log.warning("%s", line)
        else:
            log.info("%s", line)
        res = plan.get("resolution")
        if res and res.get("region_screen_px") == res.get("region_screen_px"):  # not nan
            log.info("the head paints the mouth at %d px; on screen it spans %.0f px, "
                     "so it is enlarged %.2fx", res["size"],
                     res["region_screen_px"], res["upscale"])


def cmd_eval_head(args: argparse.Namespace) -> int:
    from training.evaluate_head import evaluate_head

    out = args.out or args.bundle.parent / f"eval-head-{args.bundle.name}"
    report = evaluate_head(args.bundle, args.footage, out, args.device, args.precision,
                           args.detail, args.texture, args.cast, args.refine)
    report.pop("per_clip")
    print(json.dumps(report, indent=2))
    log.info("report, side-by-side video and contact sheet in %s", out)
    return 0


def _one_blas_thread() -> None:
    """Before numpy loads, so that its BLAS pool starts with one thread: its idle workers
    spin in sched_yield after every small product (avatar/blas.py; on a 2-core host one
    took 40-57 % of a core while two sessions spoke). The renderer's torch threads are set
    apart (``--render-threads``)."""
    from avatar.blas import one_blas_thread

    one_blas_thread()


def cmd_serve(args: argparse.Namespace) -> int:
    _one_blas_thread()
    from streaming.app import ServerConfig
    from streaming.routes import serve

    devices = tuple(d.strip() for d in args.devices.split(",") if d.strip())
    if not devices:
        raise TwincastError("--devices: name at least one device (cpu, cuda:0, ...)")
    if args.max_sessions < 1:
        raise TwincastError("--max-sessions must be at least 1")
    if args.render_threads < 0:
        raise TwincastError("--render-threads must be 0 (half the cores) or more")
    if not 0 <= args.host_share <= 1:
        raise TwincastError("--host-share must be between 0 (no check) and 1 (every core)")
    if args.max_batch < 1:
        raise TwincastError("--max-batch must be at least 1")
    if not 0 <= args.lost_share < 1:
        raise TwincastError("--lost-share must be from 0 (no check) to under 1 (a share of "
                            "the frames, e.g. 0.05)")
    if args.log_format == "json":
        from twincast.logs import use_json_logs

        use_json_logs()
    serve(args.bundles, ServerConfig(host=args.host, port=args.port, token=args.token,
                                     devices=devices, max_sessions=args.max_sessions,
                                     cors_origins=tuple(args.cors_origin),
                                     rtmp_allow=tuple(args.rtmp_allow),
                                     precision=args.precision,
                                     render_threads=args.render_threads,
                                     host_share=args.host_share or None,
                                     lost_share=args.lost_share or None,
                                     max_batch=args.max_batch,
                                     compositing=args.compositing,
                                     playout_delay=_playout_delay_config(args.playout_delay),
                                     label=_label_config(args),
                                     watermark=_watermark_config(args),
                                     allow_unconsented=args.allow_unconsented,
                                     llm=_llm_config(args), stt=_stt_config(args)))
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    import os
    import secrets
    import time

    from streaming.cluster import launch

    devices = tuple(d.strip() for d in args.devices.split(",") if d.strip())
    if not devices:
        raise TwincastError("--devices: name at least one device (cpu, cuda:0, ...)")
    if args.max_sessions < 1 or args.render_threads < 1:
        raise TwincastError("--max-sessions and --render-threads must be at least 1")
    missing = [b for b in args.bundles if not (b / "manifest.json").is_file()]
    if missing:
        raise TwincastError(f"{missing[0]} is not an avatar bundle (no manifest.json); "
                            "`twincast enrol` makes one")
    from streaming.app import bundle_names

    token = args.token or os.environ.get("TWINCAST_TOKEN")
    if args.rollout and not token:
        raise TwincastError("--rollout: give the cluster's API token (--token or "
                            "TWINCAST_TOKEN): the new workers take it")
    token = token or secrets.token_urlsafe(18)
    cfg = launch.ClusterConfig(
        bundles={n: str(p.resolve()) for n, p in bundle_names(args.bundles).items()},
        token=token, address=args.ray, host=args.host, port=args.port, devices=devices,
        render_threads=args.render_threads, max_sessions=args.max_sessions,
        allow_unconsented=args.allow_unconsented, cors_origins=tuple(args.cors_origin))
    if args.rollout:
        if args.drain_timeout < 0:
            raise TwincastError("--drain-timeout must be 0 or more")
        result = launch.rollout(cfg, drain_timeout_s=args.drain_timeout)
        print(json.dumps(result), flush=True)
        return 0
    url, workers = launch.start(cfg)
    if not args.token and not os.environ.get("TWINCAST_TOKEN"):
        print(f"API token: {token}", flush=True)
    print(f"twincast cluster: {len(workers)} workers; open {url}/#token=<the API token>",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        launch.stop(workers)


def cmd_stream(args: argparse.Namespace) -> int:
    import re

    _one_blas_thread()
    from avatar.show import load_show
    from streaming.app import ServerConfig
    from streaming.requests import BadRequest, StreamRequest
    from streaming.routes import serve

    key = None
    if args.key is not None:
        if not re.fullmatch(r"#?[0-9a-fA-F]{6}", args.key):
            raise TwincastError(f"--key {args.key!r}: a colour as RRGGBB, e.g. 00ff00")
        h = args.key.lstrip("#")
        key = [int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)]
    body = {"rtmp": args.rtmp, "width": args.size[0], "height": args.size[1],
            "video_kbps": args.video_kbps, "audio_kbps": args.audio_kbps,
            "keyframe_s": args.keyframe_s, "key_colour": key}
    try:
        req = StreamRequest.parse(body)
    except BadRequest as e:  # the API's words, the command line's flags
        message = str(e)
        for name in body:
            message = message.replace(f"'{name}'", "--" + name.replace("_", "-"), 1)
        raise TwincastError(message) from None
    show = load_show(args.show) if args.show else None
    llm = _llm_config(args)
    if show is not None and show.chat is not None:
        if llm is None:
            raise TwincastError(f"{args.show}: its [chat] is answered by an LLM; add --llm "
                                "URL --llm-model NAME (any OpenAI-compatible server)")
        if show.chat.filter is not None:
            from streaming.moderation import load_filter

            load_filter(show.chat.filter)  # a wrong name is an error now, not on air
    if args.log_format == "json":
        from twincast.logs import use_json_logs

        use_json_logs()
    devices = tuple(d.strip() for d in args.devices.split(",") if d.strip()) or ("cpu",)
    serve([args.bundle], ServerConfig(host=args.host, port=args.port, token=args.token,
                                      devices=devices, precision=args.precision,
                                      label=_label_config(args),
                                      watermark=_watermark_config(args),
                                      allow_unconsented=args.allow_unconsented,
                                      llm=llm, stt=_stt_config(args)),
          stream=(req, show))
    return 0


def cmd_eval_voice(args: argparse.Namespace) -> int:
    from training.voice.evaluate import evaluate_voice

    out = args.out or args.bundle.parent / f"eval-voice-{args.bundle.name}"
    report = evaluate_voice(args.bundle, args.data, out, args.transcript, args.device,
                            args.limit, args.whole_transcripts, not args.no_unseen)
    report.pop("per_clip")
    print(json.dumps(report, indent=2))
    log.info("report and plots in %s", out)
    return 0


def cmd_train_head(args: argparse.Namespace) -> int:
    from training.head.stage import train_and_export

    out = train_and_export(args.workdir, args.preset, args.device, args.name,
                           export=not args.no_export, train=not args.export_only,
                           max_minutes=args.max_minutes)
    if "bundle" in out:
        log.info("avatar bundle: %s (head trained in %.0f s)", out["bundle"],
                 out["head_seconds"])
    _say_plan(out)
    return 0


def cmd_eval_motion(args: argparse.Namespace) -> int:
    from training.evaluate_motion import MotionEvalConfig, evaluate_motion

    if args.passes < 1:
        raise TwincastError(f"--passes {args.passes}: must be at least 1")
    report = evaluate_motion(args.bundle, args.footage, args.out, args.device,
                             MotionEvalConfig(passes=args.passes, seed=args.seed),
                             video=not args.no_video)
    print(json.dumps(report, indent=2))
    log.info("report, head-angle plot and worst seams in %s", args.out)
    return 0


def _enrolled_bundle(workdir: Path, name: str | None, what: str) -> tuple[Path, Path]:
    """The one bundle of WORKDIR (or the one named) and its enrolment cache."""
    from training.workdir import Workdir

    wd = Workdir(workdir)
    bundles = [b for b in wd.bundles() if not name or b.name == name]
    if len(bundles) != 1:
        raise TwincastError(f"{wd.avatars}: " + ("holds several bundles; say which with "
                            "--name" if bundles else "no such bundle; enrol first"))
    if not (wd.features / "manifest.json").is_file():
        raise TwincastError(f"{wd.features}: no enrolment cache; the {what} is cut from it "
                            "(run `twincast enrol` first)")
    return bundles[0], wd.features


def cmd_train_texture(args: argparse.Namespace) -> int:
    from training.head.export import add_texture

    bundle, features = _enrolled_bundle(args.workdir, args.name, "texture bank")
    name = add_texture(bundle, features)
    print(json.dumps({"bundle": str(bundle), "texture": name}, indent=2))
    return 0


def cmd_train_colour(args: argparse.Namespace) -> int:
    from training.head.export import add_colour

    bundle, features = _enrolled_bundle(args.workdir, args.name, "colour measurement")
    colour = add_colour(bundle, features)
    if not colour:
        raise TwincastError(f"{features}: too few frames with one face to measure the "
                            "paint's colour cast; the bundle renders without the correction")
    print(json.dumps({"bundle": str(bundle), "colour": colour}, indent=2))
    return 0


def cmd_train_refine(args: argparse.Namespace) -> int:
    import dataclasses

    from avatar.devices import device
    from training.head.export import add_refine
    from training.head.train import head_preset

    dev = device(args.device)
    cfg = head_preset(args.preset).refine_config()
    if args.steps is not None:
        if args.steps < 1:
            raise TwincastError(f"--steps {args.steps}: give at least 1 step")
        cfg = dataclasses.replace(cfg, steps=args.steps)
    if args.max_minutes is not None:
        if args.max_minutes <= 0:
            raise TwincastError(f"--max-minutes {args.max_minutes}: give a positive cap")
        cfg = dataclasses.replace(cfg, max_minutes=args.max_minutes)
    if cfg.steps <= 0:
        raise TwincastError(f"the {args.preset} preset trains no refiner; give --steps N")
    if args.scale is not None:
        cfg = dataclasses.replace(cfg, scale=args.scale)
    bundle, features = _enrolled_bundle(args.workdir, args.name, "refiner's training frames")
    refine = add_refine(bundle, features, cfg, str(dev))
    if not refine:
        raise TwincastError(f"{bundle}: no refiner kept (none was as faithful as the paint "
                            "on held-out frames, or too few frames); the bundle is unchanged")
    print(json.dumps({"bundle": str(bundle), "refine": refine["file"],
                      **{k: refine["report"][k] for k in ("steps", "seconds", "paint",
                                                          "chosen")}}, indent=2))
    return 0


def cmd_train_motion(args: argparse.Namespace) -> int:
    from training.head.export import add_motion

    bundle, features = _enrolled_bundle(args.workdir, args.name,
                                        "bank (with the source footage)")
    section = add_motion(bundle, features)
    print(json.dumps({"bundle": str(bundle), **section.to_dict(),
                      "files": len(section.files)}, indent=2))
    return 0


def cmd_train_voice(args: argparse.Namespace) -> int:
    from training.enrol import train_voice_stage

    out = train_voice_stage(args.workdir, args.preset, args.device, args.name,
                            max_minutes=args.max_minutes, only=args.only,
                            vocoder_minutes=args.vocoder_minutes)
    if out.get("worker"):
        pass  # a torchrun job's other process: the first one reports and exports
    elif out["bundle"] is None:
        log.info("voice: the %s stage is trained; run again without --only to finish",
                 args.only)
    else:
        log.info("voice added to %s (trained in %.0f s)", out["bundle"], out["voice_seconds"])
        _say_plan(out)
    return 0


def cmd_say(args: argparse.Namespace) -> int:
    from avatar.offline import say_file

    res = say_file(args.bundle, args.text, args.out, args.device, args.pace,
                   _provenance(args))
    log.info("%.1f s of speech in %.2f s: %s", res["audio_seconds"], res["seconds"],
             res["out"])
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    import json

    from avatar.verify import verify

    seconds = args.seconds if args.seconds is not None else \
        (60.0 if "://" in args.source else None)
    res = verify(args.source, seconds)
    if args.json:
        print(json.dumps(res, indent=2))
    for medium in () if args.json else ("video", "audio"):
        r = res[medium]
        if r is None:
            continue
        if r["blocks_seen"] == 0:
            print(f"{medium}: too short to read: the mark needs at least 6 s of it")
        elif r["found"]:
            times = [b["time"] for b in r["blocks"]]
            span = f"{times[0]} .. {times[-1]}" if len(times) > 1 else times[0]
            print(f"{medium}: twincast mark, avatar {r['id']}, made {span} (UTC), "
                  f"{r['blocks_read']}/{r['blocks_seen']} blocks read, confidence "
                  f"{r['confidence']:.2f}")
        else:
            print(f"{medium}: no twincast mark found (sync {r['sync_z']}, "
                  f"{r['blocks_seen']} blocks looked at)")
    c = res["c2pa"]
    if c is not None and not args.json:
        if not c["valid"]:
            why = [p for p in c["problems"] if p != "signingCredential.untrusted"]
            print(f"c2pa: a manifest is there but does not check out "
                  f"({', '.join(why)}): the file was changed after signing, or "
                  "the manifest is damaged")
        else:
            who = f"{c['signed_by']} ({c['issuer']})"
            trust = "on no trust list this reader knows" if not c["trusted"] else "trusted"
            what = "synthetic (trainedAlgorithmicMedia)" if c["synthetic"] else \
                "not marked synthetic"
            avatar = c["avatar"].get("avatar")
            print(f"c2pa: signed by {who}, {trust}; made by {c['generator']}"
                  + (f" from avatar {avatar} ({c['avatar'].get('mark_id')})" if avatar else "")
                  + f"; {what}")
    elif not args.json and "://" not in args.source:
        print("c2pa: no Content Credentials in the file")
    if not res["found"]:
        print(f"twincast: no twincast mark found in {args.source}", file=sys.stderr)
        return 1
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from avatar.offline import render_file, render_show, render_text

    prov = _provenance(args)
    if args.no_label:
        log.warning("rendering without the visible AI-generated label (--no-label)")
    if args.show is not None:
        res = render_show(args.bundle, args.show, args.out, args.device, args.batch,
                          args.precision, prov)
        log.info("%.0f s of show in %.1f s: %.1fx real time", res["video_seconds"],
                 res["seconds"] + res["speech_seconds"], res["realtime_x"])
    elif args.text is not None:
        res = render_text(args.bundle, args.text, args.out, args.device, args.batch,
                          args.pace, args.precision, prov)
    else:
        res = render_file(args.bundle, args.audio, args.out, args.device, args.batch,
                          args.precision, prov)
    log.info("rendered %d frames in %.1f s (%.0f frames/s): %s", res["frames"],
             res["seconds"], res["fps"], res["out"])
    return 0


def cmd_bench_render(args: argparse.Namespace) -> int:
    from bench.runtime import bench_render

    print(json.dumps(bench_render(args.bundle, args.device, _batches(args.batches),
                                         seconds=args.seconds, preset=args.preset,
                                         precision=args.precision,
                                         model_size=args.model_size,
                                         motion=args.motion,
                                         compositing=args.compositing,
                                         refiner=args.refiner,
                                         threads=args.threads), indent=2))
    return 0


def cmd_bench_stream(args: argparse.Namespace) -> int:
    _one_blas_thread()  # its server runs in this process, as `serve` would run it
    from bench.stream import bench_stream

    try:
        sizes = tuple(_size(s.strip()) for s in args.sizes.split(",") if s.strip())
    except argparse.ArgumentTypeError as e:
        raise TwincastError(f"--sizes: {e}") from None
    print(json.dumps(bench_stream(args.bundle, sizes, args.idle_seconds), indent=2))
    return 0


def cmd_bench_lanes(args: argparse.Namespace) -> int:
    _one_blas_thread()  # as `serve` runs
    if args.max_batch < 1:
        raise TwincastError("--max-batch must be at least 1")
    sessions = _batches(args.sessions, "--sessions")
    devices = tuple(d.strip() for d in args.devices.split(",") if d.strip())
    if not devices:
        raise TwincastError("--devices: name at least one device, e.g. cpu or cuda:0")
    from bench.lanes import LanesConfig, bench_lanes  # (loads torch: after the checks)

    cfg = LanesConfig(devices=devices, sessions=sessions, seconds=args.seconds,
                      max_batch=args.max_batch, encode=args.encode, motion=args.motion)
    print(json.dumps(bench_lanes(args.bundle, cfg, args.preset, args.precision,
                                 args.model_size, args.compositing), indent=2))
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    _one_blas_thread()  # its server runs in this process, as `serve` would run it
    from bench.serve import bench_serve

    if args.sessions < 1 or args.max_batch < 1:
        raise TwincastError("--sessions and --max-batch must be at least 1")
    devices = tuple(d.strip() for d in args.devices.split(",") if d.strip())
    print(json.dumps(bench_serve(args.bundle, args.sessions, args.seconds, devices,
                                 args.max_batch, args.precision), indent=2))
    return 0


def cmd_bench_faults(args: argparse.Namespace) -> int:
    _one_blas_thread()  # its server runs in this process, as `serve` would run it
    from bench.faults import bench_faults

    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    bad = [f for f in faults if f not in FAULT_NAMES]
    if bad:
        raise TwincastError(f"unknown fault {bad[0]!r}; choose from {', '.join(FAULT_NAMES)}")
    if not (args.bundle / "manifest.json").exists():
        raise TwincastError(f"{args.bundle} is not an avatar bundle (no manifest.json)")
    if {"disk_full", "killed_enrolment"} & set(faults) and \
            not any(args.data.glob("*.mpg")):
        raise TwincastError(f"{args.data} has no .mpg clips for the enrolment faults; pass "
                            "--data with GRID's train split")
    print(json.dumps(bench_faults(args.bundle, faults, args.data), indent=2))
    return 0


def cmd_bench_soak(args: argparse.Namespace) -> int:
    from bench.soak import bench_soak

    print(json.dumps(bench_soak(args.bundle, args.minutes, args.window_seconds,
                                args.churn_seconds), indent=2))
    return 0


def cmd_bench_watermark(args: argparse.Namespace) -> int:
    from bench.watermark import WatermarkBenchConfig, run

    missing = [p for p in [*args.speech, *args.unmarked_video, *args.unmarked_audio]
               if not p.exists()]
    if missing:
        raise TwincastError(f"{missing[0]}: no such file or folder")
    cfg = WatermarkBenchConfig(minutes=args.minutes, window_s=args.window_seconds,
                               speech=tuple(args.speech),
                               unmarked_video=tuple(args.unmarked_video),
                               unmarked_audio=tuple(args.unmarked_audio),
                               paths=tuple(p for p in args.paths.split(",") if p))
    result = json.dumps(run(args.bundle, cfg), indent=2)
    if args.out is not None:
        from avatar import atomic

        with atomic.atomic_path(args.out, ".json") as tmp:
            tmp.write_text(result + "\n")
    print(result)
    return 0


def cmd_bench_consent(args: argparse.Namespace) -> int:
    from bench.consent import run

    if min(args.codes, args.grid_sets, args.lj) < 1:
        raise TwincastError("--codes, --grid-sets and --lj must be at least 1")
    result = json.dumps(run(args.codes, args.grid_sets, args.lj), indent=2)
    if args.out is not None:
        from avatar import atomic

        with atomic.atomic_path(args.out, ".json") as tmp:
            tmp.write_text(result + "\n")
    print(result)
    return 0


def cmd_bench_ask(args: argparse.Namespace) -> int:
    _one_blas_thread()  # its server runs in this process, as `serve` would run it
    from bench.ask import bench_ask

    if args.questions < 1 or args.chat_questions < 0:
        raise TwincastError("--questions must be at least 1 and --chat-questions at least 0")
    from avatar.bundle import read_manifest

    read_manifest(args.bundle, verify=False)  # a clear error for a wrong path
    print(json.dumps(bench_ask(args.bundle, args.questions, args.llm, args.llm_model,
                               args.chat_questions, args.llm_nice, args.viewer,
                               args.playout_delay, args.server_log),
                     indent=2))
    return 0


def cmd_bench_cluster(args: argparse.Namespace) -> int:
    from avatar.bundle import read_manifest

    if args.says < 1:
        raise TwincastError("--says must be at least 1")
    if args.rounds < 1:
        raise TwincastError("--rounds must be at least 1")
    try:
        hold = tuple(int(n) for n in args.hold.split(",") if n.strip())
    except ValueError:
        hold = (0,)
    if not hold or min(hold) < 1:
        raise TwincastError(f"--hold {args.hold!r}: give numbers of sessions, e.g. 2,3")
    read_manifest(args.bundle, verify=False)  # a clear error for a wrong path
    import contextlib

    from bench.cluster import bench_cluster

    # Ray's driver prints its nodes' notices on stdout; the JSON alone goes there.
    with contextlib.redirect_stdout(sys.stderr):
        result = bench_cluster(args.bundle.resolve(), args.says, hold, args.rounds)
    print(json.dumps(result, indent=2))
    return 0


def cmd_bench_cluster_features(args: argparse.Namespace) -> int:
    import contextlib

    from bench.cluster_features import bench_cluster_features

    with contextlib.redirect_stdout(sys.stderr):  # Ray's notices; the JSON alone on stdout
        result = bench_cluster_features(args.footage, args.transcript, args.preset)
    print(json.dumps(result, indent=2))
    return 0


def cmd_bench_voice(args: argparse.Namespace) -> int:
    from bench.runtime import bench_voice

    if args.repeats < 1:
        raise TwincastError(f"--repeats {args.repeats}: must be at least 1")
    print(json.dumps(bench_voice(args.bundle, args.device, args.repeats), indent=2))
    return 0


def cmd_bench_features(args: argparse.Namespace) -> int:
    from bench.features import bench_features

    result = bench_features(args.footage, _features_config(args.workers),
                            transcript=args.transcript, workdir=args.workdir)
    print(json.dumps(result, indent=2))
    return 0


def cmd_bench_align(args: argparse.Namespace) -> int:
    from bench.features import bench_align

    print(json.dumps(bench_align(args.features, args.truth), indent=2))
    return 0


def _disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it) is a write that failed for want of space: an
    OSError with ENOSPC or EDQUOT, or a library's own words for it (torch.save says "file
    write failed", FFmpeg and numpy pass on the C library's message)."""
    import errno

    seen: BaseException | None = e
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen)
        if "No space left on device" in text or "file write failed" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


OWN_LOGGERS = ("avatar", "bench", "integrations", "streaming", "training", "twincast")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.verbose == 1:
        # aiortc and aioice log every packet at debug level: -v is twincast's own lines.
        for name in OWN_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)
    missing = _missing_role(args.command)
    if missing is not None:
        print(f"twincast: error: {missing}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except TwincastError as e:
        print(f"twincast: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("twincast: interrupted", file=sys.stderr)
        return 130
    except (OSError, RuntimeError) as e:
        if not _disk_full(e):
            raise
        print("twincast: error: the disk is full (no space left on device); free some space "
              "or use a folder on another disk, then run the same command again: finished "
              "work is kept and reused", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top not in EXTRA_OF:
            raise
        extra = EXTRA_OF[top]
        print(f"twincast: error: '{args.command}' needs {top}, which this install lacks; "
              f"install it with: pip install 'twincast[{extra}]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
