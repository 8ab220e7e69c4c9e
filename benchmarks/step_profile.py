"""Where one training step of a quickstart spends its time (CPU), by part of the model.

Usage: python benchmarks/step_profile.py {detection,mask,segmentation,pretrain} [--steps 5]
           [--threads 2] [--workers W] [key=value ...]

Builds the quickstart's task, model, optimizer and loader exactly as tools/train.py /
tools/pretrain.py do (configs/synthetic/faster_rcnn_R_18_FPN.yaml,
configs/synthetic/mask_rcnn_R_18_FPN.yaml, configs/synthetic/deeplabv3plus_R_18_os16.yaml,
configs/pretrain/synthetic_resnet18.yaml, on datasets/synthetic), runs one warm-up step, then
times `--steps` steps:
  - data: waiting for the next batch (loader workers as configured, or --workers);
  - forward, by part: the wall time inside each listed submodule's forward (exclusive of the
    listed parts inside it), and the rest of the forward (losses, glue);
  - backward, clipping and the optimizer step;
and, from torch.profiler over the same steps, the operators with the most self CPU time and
the share of the step not spent inside any operator (Python overhead between ops).
Prints a markdown table (ms per step and % of the step). Float32 unless train.amp says
otherwise and the CPU has bf16 kernels.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from resnet_detect.engine.amp import AMP_DTYPES, amp_for_device, parse_amp  # noqa: E402
from resnet_detect.engine.data import build_train_loader  # noqa: E402
from resnet_detect.engine.config import parse_bool  # noqa: E402
from resnet_detect.engine.host_memory import cache_host_memory  # noqa: E402
from resnet_detect.engine.train_settings import build_optimizer_from_config  # noqa: E402
from resnet_detect.engine.tasks import load_task_config, task_module  # noqa: E402

CONFIGS = {"detection": "configs/synthetic/faster_rcnn_R_18_FPN.yaml",
           "mask": "configs/synthetic/mask_rcnn_R_18_FPN.yaml",
           "segmentation": "configs/synthetic/deeplabv3plus_R_18_os16.yaml",
           "pretrain": "configs/pretrain/synthetic_resnet18.yaml"}
# the parts timed, by submodule path (outer parts first; times are exclusive of listed inner parts)
PARTS = {"detection": ["backbone", "backbone.bottom_up", "rpn", "rpn.head", "roi_heads",
                       "roi_heads.box_pooler", "roi_heads.box_head", "roi_heads.box_predictor"],
         "mask": ["backbone", "backbone.bottom_up", "rpn", "rpn.head", "roi_heads",
                  "roi_heads.box_pooler", "roi_heads.box_head", "roi_heads.box_predictor",
                  "roi_heads.mask_pooler", "roi_heads.mask_head"],
         "segmentation": ["backbone", "head", "aux_head"],
         "pretrain": ["backbone", "fc"]}


class PartTimer:
    """Inclusive forward wall time of chosen submodules, via forward hooks."""

    def __init__(self, model: nn.Module, paths: Sequence[str]) -> None:
        self.inclusive: dict[str, float] = defaultdict(float)
        self.paths = [p for p in paths if _submodule(model, p) is not None]
        self._starts: dict[str, list[float]] = defaultdict(list)
        for path in self.paths:
            module = _submodule(model, path)
            module.register_forward_pre_hook(lambda m, a, p=path: self._starts[p].append(
                time.perf_counter()))
            module.register_forward_hook(lambda m, a, o, p=path: self._stop(p))

    def _stop(self, path: str) -> None:
        self.inclusive[path] += time.perf_counter() - self._starts[path].pop()

    def exclusive(self) -> dict[str, float]:
        out = {}
        for path in self.paths:
            inner = [p for p in self.paths if p.startswith(path + ".")
                     and not any(p.startswith(q + ".") for q in self.paths
                                 if q.startswith(path + ".") and q != p)]
            out[path] = self.inclusive[path] - sum(self.inclusive[p] for p in inner)
        return out

    def reset(self) -> None:
        self.inclusive.clear()


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    module: Any = model
    for name in path.split("."):
        module = getattr(module, name, None)
        if not isinstance(module, nn.Module):
            return None
    return module


@contextmanager
def timed(totals: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    totals[key] += time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=sorted(CONFIGS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--workers", type=int, help="loader workers (default: the config's)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_intermixed_args(argv)
    torch.set_num_threads(args.threads)
    name, cfg = load_task_config(ROOT / CONFIGS[args.task], args.overrides)
    if args.workers is not None:
        cfg.data.num_workers = args.workers
    if parse_bool(cfg.train.cache_host_memory, "train.cache_host_memory"):
        cache_host_memory()  # as the training tools do on a CPU
    task = task_module(name).TASK()
    data = task.prepare(cfg)
    model = task.build_model(cfg)
    model.train()
    optimizer = build_optimizer_from_config(cfg, model)
    device = torch.device("cpu")
    amp = amp_for_device(parse_amp(cfg.train.amp), "cpu")
    loader = iter(build_train_loader(data.train, batch_size=cfg.train.batch_size,
                                     seed=cfg.train.seed, num_workers=cfg.data.num_workers,
                                     group_ids=getattr(data, "group_ids", None),
                                     rank=0, world_size=1, collate_fn=data.collate,
                                     batch_keys=data.batch_keys))
    parts = PartTimer(model, PARTS[args.task])
    params = [p for p in model.parameters() if p.requires_grad]
    totals: dict[str, float] = defaultdict(float)

    def step() -> None:
        with timed(totals, "data (waiting for the batch)"):
            batch = next(loader)
        with timed(totals, "forward"), torch.autocast("cpu", dtype=AMP_DTYPES.get(amp),
                                                      enabled=amp is not None):
            loss = sum(task.losses(model, batch, device).values())
        with timed(totals, "backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with timed(totals, "clip + optimizer step"):
            if cfg.train.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_grad_norm)
            optimizer.step()

    step()  # warm-up
    totals.clear()
    parts.reset()
    activities = [torch.profiler.ProfilerActivity.CPU]
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(args.steps):
            step()
    wall = (time.perf_counter() - start) / args.steps
    per_step = {k: v / args.steps for k, v in totals.items()}
    exclusive = {k: v / args.steps for k, v in parts.exclusive().items()}
    rows = [("data (waiting for the batch)", per_step["data (waiting for the batch)"])]
    rows += [(f"forward: {path}", t) for path, t in exclusive.items()]
    rows.append(("forward: the rest (losses, targets, glue)",
                 per_step["forward"] - sum(exclusive.values())))
    rows += [(k, per_step[k]) for k in ("backward", "clip + optimizer step")]
    events = profiler.key_averages()
    op_self = sum(e.self_cpu_time_total for e in events) / 1e6 / args.steps
    print(f"\n{args.task}: {CONFIGS[args.task]}, batch {cfg.train.batch_size}, "
          f"{cfg.data.num_workers} loader worker(s), {args.threads} threads, "
          f"{'float32' if amp is None else amp}, {args.steps} steps: {wall * 1000:.0f} ms/step "
          f"(under the profiler)\n")
    print("| part | ms/step | % |\n|---|---|---|")
    for label, seconds in rows:
        print(f"| {label} | {seconds * 1000:.1f} | {100 * seconds / wall:.1f} |")
    print(f"\nOperators' self CPU time {op_self * 1000:.0f} ms/step ({100 * op_self / wall:.0f} % "
          f"of the step; the rest is Python between operators and waiting). Top operators:\n")
    print("| operator | self ms/step | % | calls/step |\n|---|---|---|---|")
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]:
        ms = e.self_cpu_time_total / 1000 / args.steps
        print(f"| {e.key} | {ms:.1f} | {100 * ms / 1000 / wall:.1f} | "
              f"{e.count / args.steps:.0f} |")
    return {"wall_s": wall, "parts": dict(rows), "operators_self_s": op_self}


if __name__ == "__main__":
    main()
