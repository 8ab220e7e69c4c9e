"""Residual-learning studies on CIFAR-style or ImageNet ResNets, with plots.

Usage:
  python tools/analyze.py STUDY [--config CONFIG] [--weights CKPT ...] --output DIR [key=value ...]

Studies:
  degradation  train plain and residual twins at two depths (degradation.depths); training and
               validation error vs iterations, plain dashed, residual solid (He et al. 2016).
  responses    std of every 3x3 layer's output after its norm, before the ReLU or the
               addition, plain vs residual (He et al. 2016, fig. 7); responses.layers=blocks:
               of every residual branch output instead.
  lesion       accuracy with one block deleted, and with k random blocks deleted, residual vs
               plain (Veit et al. 2016).
  paths        path-length distribution, gradient magnitude along paths of length k, and their
               product: the effective paths (Veit et al. 2016).

Without --weights a study trains what it needs (the residual net at model.depth and, for
responses and lesion, its plain twin), saves it to DIR/models/ARCH-<recipe>.pth and analyzes
it; run again into the same DIR, it reuses the nets there trained with the same recipe and
data (a net of another recipe gets its own file). With
--weights (repeatable), it analyzes those classifier checkpoints instead (e.g.
DIR/models/*.pth of an earlier run, or pretraining's model_final.pth). Each study writes
DIR/STUDY.png, DIR/STUDY.csv and DIR/STUDY.json and prints where the picture is.

Data (data.root): the synthetic shapes by default (`python tools/make_synthetic.py`), the
CIFAR-10 or CIFAR-100 python batches (data.root=.../cifar-10-batches-py, or the folder above
it), or any ImageFolder tree (root/train/<class>/*, root/val/<class>/*), all resized to
data.image_size.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any
from pathlib import Path

if not __package__:  # run as a file: the repository's package (not an installed one)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet_detect.backbones.studies.config import BASE_CONFIG, OPEN_KEYS, build_context_from_config  # noqa: E402
from resnet_detect.backbones.studies.run import STUDIES, run_study  # noqa: E402
from resnet_detect.engine import TrainingInterrupted, load_config, save_config, setup_logging  # noqa: E402
from resnet_detect.engine.config import load_defaults  # noqa: E402
from resnet_detect.engine.tasks import refuse_other_task_config  # noqa: E402
from resnet_detect.engine.cli import program_name, run_tool  # noqa: E402
from resnet_detect import CONFIGS  # noqa: E402

DEFAULT_CONFIG = CONFIGS / "analyze/cifar_synthetic.yaml"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name(), description=__doc__, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=STUDIES)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="YAML config (default: configs/analyze/cifar_synthetic.yaml)")
    parser.add_argument("--weights", action="append", default=[], metavar="CKPT",
                        help="classifier checkpoint to analyze (repeat for several)")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="output folder (default: output/analyze/STUDY)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    return parser.parse_intermixed_args(argv)


class _Terminated(BaseException):
    """SIGTERM outside a training (which stops at its own next step); a BaseException, as
    KeyboardInterrupt, so that no `except Exception` on the way (a weights reader's) takes
    it for an error of its own."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def _warn_of_an_unused_length(cfg: Any, study: str, overrides: Sequence[str]) -> None:
    """solver.iterations given while the config sets the study's own length (the default
    config's degradation.iterations: 250), which wins."""
    given = {o.split("=", 1)[0].strip() for o in overrides}
    own = cfg[study].get("iterations", 0)
    if "solver.iterations" in given and own > 0 and f"{study}.iterations" not in given:
        logging.getLogger("analyze").warning(
            "solver.iterations=%s is not used: %s.iterations=%s (the config's) sets the length "
            "of this study's nets; set %s.iterations=%s", cfg.solver.iterations, study, own,
            study, cfg.solver.iterations)


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Run one study; returns the paths it wrote ({"png", "csv", "json"})."""
    args = parse_args(argv)
    output = Path(args.output or f"output/analyze/{args.study}")
    refuse_other_task_config(args.config, args.overrides, "analyze")
    cfg = load_config(args.config, args.overrides, defaults=load_defaults(BASE_CONFIG),
                      open_keys=OPEN_KEYS)
    setup_logging(output)
    _warn_of_an_unused_length(cfg, args.study, args.overrides)
    ctx = build_context_from_config(cfg, output, args.study, trains=not args.weights)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        written = run_study(args.study, ctx, cfg, args.weights)
    except TrainingInterrupted as stopped:
        print(f"{args.study}: {stopped.signal_name} stopped a training; run the command again: "
              f"it reuses the nets finished in {output / 'models'}, continues the stopped one "
              f"from its checkpoint and trains the others", file=sys.stderr, flush=True)
        raise SystemExit(stopped.exit_code) from None
    except (KeyboardInterrupt, _Terminated) as e:  # in the analysis after the trainings
        name, code = ("Ctrl-C", 130) if isinstance(e, KeyboardInterrupt) else ("SIGTERM", 143)
        print(f"{args.study}: {name} stopped the analysis before its results were written; "
              f"nets trained so far are in {output / 'models'}: run the command again (it "
              f"reuses them)", file=sys.stderr, flush=True)
        raise SystemExit(code) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    # with the results it describes: a stopped rerun leaves the earlier pair as it was
    save_config(cfg, output / f"{args.study}_config.yaml")
    print(f"{args.study}: picture at {written['png']} (numbers: {written['csv']}, "
          f"{written['json']})", flush=True)
    return written


if __name__ == "__main__":
    run_tool(main)
