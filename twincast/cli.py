"""The ``twincast`` command line.

Subcommands import their modules only when they run, so ``twincast --help`` is instant and a
runtime-only command never loads training code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from avatar.errors import TwincastError

log = logging.getLogger("twincast")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT (e.g. 512x512)") from None
    if w < 64 or h < 64 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"{text!r}: sides must be even and at least 64")
    return w, h


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twincast", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("sample", help="write synthetic presenter footage to enrol from")
    s.add_argument("-o", "--out", type=Path, default=Path("build/sample"),
                   help="output folder (default: build/sample)")
    s.add_argument("--minutes", type=_positive, default=2.0, help="length (default 2)")
    s.add_argument("--size", type=_size, default=(512, 512), help="WIDTHxHEIGHT (512x512)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("enrol", help="learn an avatar from footage (features stage)")
    e.add_argument("footage", nargs="+", type=Path, help="video files or folders of clips")
    e.add_argument("--workdir", type=Path, required=True, help="where the cache is written")
    e.add_argument("--transcript", type=Path,
                   help="plain text (one clip) or 'clip<TAB>text' lines (a folder)")
    e.add_argument("--preset", choices=("ci", "cpu", "gpu"), default="cpu",
                   help="ci: tiny and fast, for tests; cpu (default); gpu")
    e.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    e.add_argument("--strict", action="store_true", help="treat quality warnings as errors")
    e.set_defaults(func=cmd_enrol)

    b = sub.add_parser("bench", help="measure speed and memory; prints JSON")
    bsub = b.add_subparsers(dest="bench", required=True, metavar="WHAT")
    bf = bsub.add_parser("features", help="the enrolment features stage")
    bf.add_argument("footage", nargs="*", type=Path,
                    help="footage (default: a fresh 1-minute synthetic sample)")
    bf.add_argument("--transcript", type=Path)
    bf.add_argument("--workers", type=int, default=2)
    bf.add_argument("--workdir", type=Path, help="keep the cache here (default: a temp dir)")
    bf.set_defaults(func=cmd_bench_features)
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
    out = write_sample(args.out, cfg)
    log.info("sample written: %s (transcript %s)", out.video, out.transcript)
    return 0


def _features_config(workers: int, preset: str = "cpu"):  # noqa: ANN202 - lazy imports
    from training.config import features_preset

    if workers < 0:
        raise TwincastError(f"--workers {workers}: must be 0 or more")
    return features_preset(preset, workers)


def cmd_enrol(args: argparse.Namespace) -> int:
    from training.enrol import enrol_features

    result = enrol_features(args.footage, args.workdir, _features_config(args.workers, args.preset),
                            transcript=args.transcript, strict=args.strict)
    sys.stdout.write((result.dir / "report.txt").read_text())
    log.info("enrolment cache: %s", result.dir)
    return 0


def cmd_bench_features(args: argparse.Namespace) -> int:
    from training.bench import bench_features

    result = bench_features(args.footage, _features_config(args.workers),
                            transcript=args.transcript, workdir=args.workdir)
    print(json.dumps(result, indent=2))
    return 0


def cmd_bench_align(args: argparse.Namespace) -> int:
    from training.bench import bench_align

    print(json.dumps(bench_align(args.features, args.truth), indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except TwincastError as e:
        print(f"twincast: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("twincast: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
