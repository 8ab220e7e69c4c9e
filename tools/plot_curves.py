"""Plot training curves of one or more runs (mmdetection's analyze_logs.py plot_curve).

Usage:
  python tools/plot_curves.py RUN_DIR [RUN_DIR ...] [--keys KEY ...] [--output FILE.png]

Reads each RUN_DIR/scalars.jsonl (written by tools/train.py and tools/pretrain.py) and draws
one panel per key, one line per run: by default the total loss and the run's first metric
(bbox/AP, segm/AP, sem_seg/mIoU or classification/top1, in percent). Any logged key works:
train/loss_cls, train/lr, bbox/AP50 ...; an unknown one is refused with the keys logged,
one logged undefined (null) at every evaluation is said so.
Writes FILE (.png, .pdf, .svg or .jpg; default: the first run's curves.png).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if not __package__:  # run as a file: the repository's package (not an installed one)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet_detect.engine.cli import program_name, run_tool  # noqa: E402
from resnet_detect.engine.config import ConfigError  # noqa: E402
from resnet_detect.engine.checkpoint import REPLACED  # noqa: E402
from resnet_detect.engine.curves import SCALARS_FILE, default_keys, read_curves  # noqa: E402
from resnet_detect.engine.files import atomic_write_figure  # noqa: E402

FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog=program_name(), description=__doc__, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (or their scalars.jsonl)")
    parser.add_argument("--keys", nargs="+", default=None, help="logged keys to plot")
    parser.add_argument("--output", default=None,
                        help="a .png, .pdf, .svg or .jpg file (default RUN_DIR/curves.png)")
    args = parser.parse_args(argv)
    if args.output is not None and Path(args.output).suffix.lower() not in FORMATS:
        parser.error(f"--output {args.output}: the picture's format is its suffix, one of "
                     f"{', '.join(FORMATS)}")
    curves = {run: read_curves(run) for run in args.runs}
    for run in args.runs:
        folder = Path(run) if Path(run).is_dir() else Path(run).parent
        if (folder / REPLACED / SCALARS_FILE).is_file():
            logging.getLogger(__name__).warning(
                "%s holds the curves of the run this one started afresh over, until its first "
                "checkpoint replaces that run: they come back in the folder's place at the next "
                "training start there (--resume continues that run)", folder / REPLACED)
    keys = args.keys or list(dict.fromkeys(k for c in curves.values() for k in default_keys(c)))
    logged = sorted({k for c in curves.values() for k in c})
    unknown = [k for k in keys if k not in logged]
    undefined = [k for k in keys if k in logged and not any(len(c.get(k, ((), ()))[1])
                                                             for c in curves.values())]
    if undefined and not unknown:
        why = (f"{', '.join(undefined)}: logged undefined (null: NaN, e.g. an AP of a size no "
               f"val object has) at every evaluation")
        if len(undefined) == len(keys):
            raise ConfigError(f"{why}, nothing to draw")
        logging.getLogger(__name__).warning("%s: not drawn", why)
        keys = [k for k in keys if k not in undefined]
    if unknown or not keys:
        what = f"no run logged {', '.join(unknown)}" if unknown else "nothing to plot"
        if any("/AP-" in k or "/IoU-" in k for k in unknown):
            what += (" (a class's AP or IoU is logged where it is defined: a class without val "
                     "objects or pixels has none)")
        empty = [run for run, c in curves.items() if not c]
        raise ConfigError(f"{what}; logged: {', '.join(logged) or 'nothing'}" + (
            f" ({', '.join(empty)}: no step logged yet; a run logs its first after "
            f"train.log_period iterations)" if empty else ""))
    first = Path(args.runs[0])
    output = Path(args.output) if args.output else (
        first if first.is_dir() else first.parent) / "curves.png"

    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator
    figure, axes = plt.subplots(len(keys), 1, figsize=(8, 3 * len(keys)), squeeze=False)
    for axis, key in zip(axes[:, 0], keys):
        for run, run_curves in curves.items():
            if key in run_curves:
                iterations, values = run_curves[key]
                axis.plot(iterations, values, marker="o" if len(values) < 30 else None,
                          label=run)
        axis.set_title(key)
        axis.set_xlabel("iteration")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # (no iteration 2.5)
        axis.grid(alpha=0.3)
        if len(curves) > 1:
            axis.legend(fontsize=8)
    figure.tight_layout()
    atomic_write_figure(figure, output)
    plt.close(figure)
    print(f"wrote {output}: {', '.join(keys)}", flush=True)
    return output


if __name__ == "__main__":
    run_tool(main)
