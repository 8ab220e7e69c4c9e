"""A run's logged scalars as curves (tools/plot_curves.py; mmdetection's analyze_logs.py
plot_curve): OUTPUT_DIR/scalars.jsonl, one JSON object per progress line or evaluation."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from .config import ConfigError

logger = logging.getLogger(__name__)

SCALARS_FILE = "scalars.jsonl"
TENSORBOARD_DIR = "tensorboard"  # the same scalars as tensorboard event files
# what a run's evaluations log first, by task: the default curve beside the loss
METRICS = ("bbox/AP", "segm/AP", "sem_seg/mIoU", "classification/top1",
           "errors/val_error")  # (the last: tools/analyze.py's studies)
LOSS = "train/total_loss"


def read_curves(run: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """{key: (iterations, values)} of a run folder's scalars.jsonl (or that file), a key
    logged undefined alone (null) with none; a line cut short (a killed run) is skipped with
    a warning; in iteration order, the last line of an iteration logged twice kept (files
    joined by hand, another tool's), with a warning."""
    path = Path(run)
    path = path / SCALARS_FILE if path.is_dir() else path
    if not path.is_file():
        older = (path.parent / "log.txt").is_file() or (path.parent / TENSORBOARD_DIR).is_dir()
        raise ConfigError(f"{path} not found: " + (
            f"{path.parent} is a run of a version from before {SCALARS_FILE} (2026-12-02): "
            f"its curves are in its tensorboard/ (tensorboard --logdir {path.parent}) and "
            f"log.txt" if older else f"a run folder of tools/train.py or tools/pretrain.py "
                                     f"holds its {SCALARS_FILE}"))
    curves: dict[str, tuple[list[int], list[float]]] = {}
    # (undecodable bytes, a damaged disk's: their lines are skipped as any other garbage)
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            iteration = int(entry.pop("iteration"))
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("%s line %d is not a logged step: skipped", path, number)
            continue
        for key, value in entry.items():
            # None: undefined (NaN: an AP of a size without objects), dropped once a later
            # line of the same iteration has had its say
            if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
                iterations, values = curves.setdefault(key, ([], []))
                iterations.append(iteration)
                values.append(value)
    unordered = False
    for key, (iterations, values) in curves.items():
        if any(b <= a for a, b in zip(iterations, iterations[1:])):
            last = dict(zip(iterations, values))  # (a later line's value wins)
            iterations, values = sorted(last), [last[i] for i in sorted(last)]
            unordered = True
        kept = [(i, float(v)) for i, v in zip(iterations, values) if v is not None]
        curves[key] = ([i for i, _ in kept], [v for _, v in kept])
    if unordered:
        logger.warning("%s: logged steps out of iteration order or logged twice (files joined "
                       "by hand, or another tool's): drawn in iteration order, the last line "
                       "of an iteration logged twice kept", path)
    return curves


def default_keys(curves: dict[str, tuple[list[int], list[float]]]) -> list[str]:
    """The loss, and the first metric of METRICS the run logged."""
    return [key for key in (LOSS, next((m for m in METRICS if m in curves), None))
            if key in curves]
