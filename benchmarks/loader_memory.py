"""Host memory of a long training run: does it stay flat?

Runs `tools/train.py` (by default the detection quickstart at tiny sizes, 2 loader workers)
in a child process and, at every progress line, sums the resident (RSS) and proportional
(PSS: shared pages split between the processes that map them) memory of the run's whole
process tree: the main process and its loader workers. Copy-on-write growth of records
shared with forked workers shows up in both. Linux only (/proc).

Usage:
  python benchmarks/loader_memory.py [--iterations 2000] [--workers 2] [--every 100]
      [--config CONFIG] [--output DIR] [key=value ...]

Prints a table and writes DIR/loader_memory.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs/synthetic/faster_rcnn_R_18_FPN.yaml"
# tiny images and a light detector: what is measured is the loaders', not the model's, memory
TINY = ["model.backbone.weights=null", "data.train.min_size=64", "data.train.max_size=96",
        "train.batch_size=2", "data.val.ann_file=null", "data.val.img_dir=null",
        "train.checkpoint_period=0", "train.lr_steps=[]", "model.fpn.out_channels=32",
        "model.rpn.pre_nms_topk_train=200", "model.rpn.post_nms_topk_train=100",
        "model.roi_heads.batch_size_per_image=64", "model.roi_heads.fc_dims=[64,64]"]
PROGRESS = re.compile(r"\biter (\d+)/\d+")


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text(encoding="ascii").split())
            except OSError:  # the process or thread just ended
                pass
    return tree


def memory_kib(pids: Sequence[int]) -> dict[str, int]:
    """Summed Rss and Pss (KiB) of `pids` (processes that ended are skipped)."""
    total = {"rss": 0, "pss": 0}
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/smaps_rollup").read_text(encoding="ascii").splitlines()
        except OSError:
            continue
        for line in lines:
            key = line.split(":")[0].lower()
            if key in total:
                total[key] += int(line.split()[1])
    return total


def measure(config: Path, iterations: int, workers: int, every: int,
            overrides: Sequence[str], output_dir: Path) -> list[dict[str, int]]:
    command = [sys.executable, str(ROOT / "tools/train.py"), str(config), *TINY,
               f"train.max_iter={iterations}", f"data.num_workers={workers}",
               f"train.log_period={every}", f"train.output_dir={output_dir}", *overrides]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    samples = []
    assert child.stdout is not None
    for line in child.stdout:
        match = PROGRESS.search(line)
        if match:
            pids = process_tree(child.pid)
            samples.append({"iteration": int(match.group(1)), "processes": len(pids),
                            **memory_kib(pids)})
            print(f"iter {samples[-1]['iteration']:>6}  processes {len(pids)}  "
                  f"RSS {samples[-1]['rss'] / 1024:8.1f} MiB  "
                  f"PSS {samples[-1]['pss'] / 1024:8.1f} MiB", flush=True)
    if child.wait() != 0:
        raise SystemExit(f"training failed (exit {child.returncode}): {' '.join(command)}")
    return samples


def growth(samples: Sequence[dict[str, int]], start: int, key: str) -> float:
    """Percent change of `key` from the first sample at or after `start` to the last."""
    first = next(s for s in samples if s["iteration"] >= start)
    return 100.0 * (samples[-1][key] - first[key]) / first[key]


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--every", type=int, default=100, help="iterations between samples")
    parser.add_argument("--start", type=int, default=200,
                        help="growth is measured from this iteration (after warm-up)")
    parser.add_argument("--output", type=Path, default=ROOT / "output/benchmarks/loader_memory")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as run_dir:
        samples = measure(args.config, args.iterations, args.workers, args.every,
                          args.overrides, Path(run_dir))
    result = {"config": str(args.config), "iterations": args.iterations,
              "workers": args.workers, "overrides": [*TINY, *args.overrides],
              "samples": samples,
              "growth_percent": {k: growth(samples, args.start, k) for k in ("rss", "pss")}}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "loader_memory.json").write_text(json.dumps(result, indent=2) + "\n",
                                                    encoding="utf-8")
    print(f"from iteration {args.start} to {samples[-1]['iteration']}: RSS "
          f"{result['growth_percent']['rss']:+.1f} %, PSS {result['growth_percent']['pss']:+.1f} %"
          f" ({args.output / 'loader_memory.json'})")
    return result


if __name__ == "__main__":
    main()
