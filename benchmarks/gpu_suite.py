"""The GPU suite: one command a session lent a GPU runs first; every figure against its
reference measured in the same run.

Usage:
  python benchmarks/gpu_suite.py --output DIR [--phases PHASE ...] [--steps N]
  (a device session: --output $OUT/suite, and --output $OUT/levers --phases det_fusion
  mask_bucket det_nms det_compile seg_compile det_infer_compile)
  python benchmarks/gpu_suite.py --output DIR --smoke      (CPU, toy sizes: make test runs it)

Writes DIR/suite.json (every row, the machine, the versions) and DIR/suite.md (the table for
BENCHMARKS.md), rewritten after each phase, so a run cut short keeps what it measured. A phase
that fails is recorded with its error and the suite goes on.

Phases (full sizes; --smoke: a few 96x128 scenes, batch 2, ResNet-18 detectors, one step):
  data            synthetic COCO scenes of 800x1333 (engine.data.synthetic, as
                  tools/make_synthetic.py) and an ImageFolder of 375x500 JPEGs.
  det_train       Faster R-CNN R50-FPN (the 1x recipe's model: frozen BN, freeze_at 2), batch
                  16 of those scenes: images/s and peak memory, ours vs torchvision's
                  FasterRCNN (resnet_fpn_backbone, trainable_layers=3), bf16 autocast and
                  fp32 (TF32 allowed; bf16 steps keep float32 matrix products exact, a
                  training's default), with cudnn.benchmark (cuDNN's best for the one
                  shape), and bf16 without it as the detection configs train (their
                  multi-scale sizes are many shapes).
  det_infer       the same architecture at 800x1333, batch 1, torchvision's weights imported
                  into ours: ms/image, peak memory, and whether the detections are the same.
  syncs           host syncs in one detection training step, ours vs torchvision's: the
                  Python-visible ones (.item, nonzero, bool masks, ...) everywhere, and on a
                  GPU every one (torch.cuda.set_sync_debug_mode).
  mask_train      Mask R-CNN R50-FPN, the same way, vs torchvision's MaskRCNN, with
                  cudnn.benchmark off (train.cudnn_benchmark's default; the suite turns it on
                  elsewhere): the mask head's convolutions see a new RoI count at every step.
  seg_train       DeepLabV3-R50 OS8 at 512x512 crops, batch 16, vs torchvision's
                  deeplabv3_resnet50 (aux head on both).
  pretrain        ResNet-50 at 224x224, batch 256, bf16: tools/pretrain.py's JPEG loader (one
                  worker per core, uint8 batches collated in the workers, pinned memory)
                  alone, then feeding the training step, vs the same steps on one batch
                  already on the GPU vs torchvision's resnet50.
  torchrun        `torchrun --nproc_per_node=1` of tools/train.py and tools/pretrain.py for a
                  few iterations (NCCL on a GPU): exit code and checkpoints.
  det_compile     ours in bf16 with train.compile (the backbone + FPN under torch.compile) vs
                  eager and vs torchvision's eager step, and the seconds of the first
                  (compiling) step.
  det_infer_compile  the same for det_infer (batch 1, float32 as Predictor runs) as
                  test.compile does it: inductor, and inductor with CUDA graphs
                  (test.compile_mode=reduce-overhead), vs eager, and the seconds of the first
                  call.
  seg_compile     DeepLabV3 training as seg_train's first setting (on a GPU: bf16,
                  channels_last, the segmentation configs' default) with train.compile (the
                  backbone and heads under torch.compile) vs eager and vs torchvision's eager
                  step.
  det_fusion      ours with each convolution's bias, ReLU and residual addition fused into one
                  cuDNN call (backbones.fused_conv) vs the plain convolutions, same weights:
                  training in bf16 (vs torchvision's step too) and inference at batch 1 (the
                  same detections?). --smoke: no fused kernels on a CPU, both plain.
  mask_bucket     Mask R-CNN in bf16 with the mask head's RoIs padded to a multiple of 128
                  (MaskRCNNHead.roi_bucket: shapes that repeat, for cuDNN's plans) vs as they
                  come, cudnn.benchmark off and (padded) on, vs torchvision's step.
  det_nms         ours in bf16 at det_train's batch, the RPN's per-image NMS one after
                  another (as now) vs two levers: on 4 CUDA side streams fed by 4 host
                  threads (RPN.nms_streams, detection.nms.per_image_batched_nms), and every
                  image and level at once as matrix products (RPN.padded_nms,
                  detection.padded_nms): torchvision's NMS is a one-block kernel the host
                  waits for, image by image. --smoke: fp32, where the CPU ignores the streams.
On a GPU, seg_train also measures the channels_last lever (model.channels_last,
engine.memory_format.place_model) in bf16 and fp32, both models (runs 4 and 5 measured it for
the detectors too; their configs keep it off).
det_train, mask_train, seg_train and det_infer add *_launches rows: operators dispatched and
host syncs per step or image and, on a GPU, kernels and the GPU's busy time against the wall
time (is the host the bound?).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time
import traceback
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torchvision.models.detection import FasterRCNN, MaskRCNN  # noqa: E402
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone  # noqa: E402

from resnet_detect.backbones import build_classifier  # noqa: E402
from resnet_detect.detection import build_model, load_detector_weights  # noqa: E402
from resnet_detect.engine.compilation import compile_model  # noqa: E402
from resnet_detect.engine.memory_format import place_model  # noqa: E402
from resnet_detect.engine.data.synthetic import CATEGORY_IDS, generate  # noqa: E402
from resnet_detect.engine.data.synthetic_shapes import compose_scene  # noqa: E402
from resnet_detect.engine.tasks import load_task_config  # noqa: E402
from resnet_detect.segmentation import upsample  # noqa: E402

# without --phases: the rows issue 14 asks for (run 5: over 400 s, then with the detectors'
# channels_last rows, since left out)
DEFAULT_PHASES = ("data", "det_train", "det_infer", "syncs", "mask_train", "seg_train",
                  "pretrain", "torchrun")
# a second command: levers, each against the plain path in the same process (det_nms after
# det_fusion: its streams never ran on a GPU)
LEVER_PHASES = ("det_fusion", "mask_bucket", "det_nms", "det_compile", "seg_compile",
                "det_infer_compile")
PHASES = DEFAULT_PHASES + LEVER_PHASES
NUM_CLASSES = len(CATEGORY_IDS)
TORCHRUN_TIMEOUT_S = 240  # each torchrun run of the phase: start-up, 2 steps and 2 checkpoints


@dataclass(frozen=True)
class Sizes:
    """What each phase runs at: the full suite on a GPU, or toy sizes for --smoke."""

    scene: tuple[int, int]
    scenes: int
    det_batch: int
    backbone: str
    seg_crop: int
    seg_batch: int
    cls_size: int
    cls_batch: int
    cls_images: int
    steps: int
    warmup: int
    mask_bucket: int  # mask_bucket: the multiple the mask head's RoIs are padded to


FULL = Sizes(scene=(800, 1333), scenes=32, det_batch=16, backbone="resnet50", seg_crop=512,
             seg_batch=16, cls_size=224, cls_batch=256, cls_images=2048, steps=10, warmup=3,
             mask_bucket=128)
SMOKE = Sizes(scene=(96, 128), scenes=4, det_batch=2, backbone="resnet18", seg_crop=64,
              seg_batch=2, cls_size=32, cls_batch=4, cls_images=8, steps=1, warmup=0,
              mask_bucket=16)
# --smoke: fewer proposals and RoIs on both sides (the code paths are the point, not speed)
SMOKE_DETECTOR = {"rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
                  "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50,
                  "box_batch_size_per_image": 16}
SMOKE_OVERRIDES = ["model.rpn.pre_nms_topk_train=100", "model.rpn.post_nms_topk_train=50",
                   "model.rpn.pre_nms_topk_test=100", "model.rpn.post_nms_topk_test=50",
                   "model.roi_heads.batch_size_per_image=16"]


class Suite:
    """Rows of measurements, written to OUTPUT/suite.json and suite.md after every phase."""

    def __init__(self, output: Path, sizes: Sizes, device: torch.device) -> None:
        self.output, self.sizes, self.device = output, sizes, device
        self.rows: list[dict[str, Any]] = []
        self.errors: dict[str, str] = {}
        self.data: Path = output / "data"
        self.info = {
            "date": time.strftime("%Y-%m-%d %H:%M"), "device": _device_name(device),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda, "cpus": os.cpu_count(), "sizes": sizes.__dict__}

    def add(self, phase: str, model: str, setting: str, **values: Any) -> None:
        row = {"phase": phase, "model": model, "setting": setting, **values}
        self.rows.append(row)
        print(json.dumps(row), flush=True)

    def write(self) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        result = {**self.info, "rows": self.rows, "errors": self.errors}
        (self.output / "suite.json").write_text(json.dumps(result, indent=1, default=str),
                                                encoding="utf-8")
        lines = [f"GPU suite, {self.info['date']}: {self.info['device']}, torch "
                 f"{self.info['torch']}, torchvision {self.info['torchvision']}", "",
                 "| phase | model | setting | images/s | ms/image | peak GiB | warmup peak GiB "
                 "| vs reference |", "|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r['phase']} | {r['model']} | {r['setting']} | "
                         f"{_fmt(r.get('images_per_s'))} | {_fmt(r.get('ms_per_image'))} | "
                         f"{_fmt(r.get('peak_gib'), 2)} | {_fmt(r.get('warmup_peak_gib'), 2)} | "
                         f"{r.get('vs_reference', '')} |")
        lines += [f"\nerror in {phase}: {_last_line(error)}"
                  for phase, error in self.errors.items()]
        (self.output / "suite.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _fmt(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()})"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(suite: Suite, step: Callable[[], object], images_per_step: int,
            steps: int | None = None) -> dict[str, float]:
    """images/s over `steps` timed steps after `warmup` ones, and the peak GPU memory of the
    timed steps (steady state) and of the warmup (cudnn.benchmark's trial workspaces included:
    the first model run at a new shape pays them, its reference then finds them cached)."""
    device, sizes = suite.device, suite.sizes
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(sizes.warmup):  # also compiles (cudnn.benchmark) and fills the allocator
        step()
    _sync(device)
    warmup_s = time.perf_counter() - start
    warmup_peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    steps = steps or sizes.steps
    for _ in range(steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    return {"images_per_s": images_per_step / seconds,
            "ms_per_image": 1000 * seconds / images_per_step, "peak_gib": peak,
            "warmup_peak_gib": warmup_peak, "warmup_s": warmup_s}


class OpCounter(TorchDispatchMode):
    """Counts the operators PyTorch dispatches (each one a kernel launch or a view)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


def launches(suite: Suite, run: Callable[[], object], ms_per_run: float) -> dict[str, Any]:
    """Is a run bound by the host launching work? Operators dispatched and host syncs (as the
    syncs phase counts them) per run and, on a GPU, kernels per run and the GPU's busy time
    (the sum of its kernels' times) against the run's wall time: a busy share well under 1
    means the GPU waits for the host. On a GPU the JSON row also lists the 15 kernels with
    the most time."""
    counter, syncs = OpCounter(), SyncCounter()
    with counter, syncs:
        run()
    python_syncs = sum(syncs.counts.values())
    row: dict[str, Any] = {"dispatched_ops": counter.count, "python_syncs": python_syncs}
    text = f"{counter.count} ops dispatched, {python_syncs} Python-visible syncs"
    if suite.device.type == "cuda":
        try:  # a profiler failure must not cost the phase's other settings
            _sync(suite.device)
            activities = [torch.profiler.ProfilerActivity.CPU,
                          torch.profiler.ProfilerActivity.CUDA]
            with torch.profiler.profile(activities=activities) as profiler:
                for _ in range(3):
                    run()
                _sync(suite.device)
            kernels = [e for e in profiler.events()  # kernels and copies, not annotations
                       if e.device_type == torch.autograd.DeviceType.CUDA
                       and not getattr(e, "is_user_annotation", False)]
            busy_ms = sum(e.time_range.elapsed_us() for e in kernels) / 3 / 1000
            by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
            for e in kernels:
                by_name[e.name][0] += e.time_range.elapsed_us() / 3 / 1000
                by_name[e.name][1] += 1 / 3
            top = sorted(by_name.items(), key=lambda item: -item[1][0])[:15]
            row.update(kernels=len(kernels) / 3, gpu_busy_ms=busy_ms,
                       top_kernels=[{"name": name[:120], "ms": round(ms, 3), "calls": round(n)}
                                    for name, (ms, n) in top])
            text += (f", {len(kernels) / 3:.0f} kernels, GPU busy {busy_ms:.1f} of "
                     f"{ms_per_run:.1f} ms")
        except Exception as error:  # noqa: BLE001
            row["profiler_error"] = repr(error)
            text += f", profiler failed: {error!r}"
    return {**row, "vs_reference": text}


def add_launch_rows(suite: Suite, phase: str, setting: str, images_per_run: int,
                    runs: list[tuple[str, Callable[[], object], dict[str, float]]]) -> None:
    """A `{phase}_launches` row per (model name, run, its `measure` result)."""
    for name, run, timed in runs:
        suite.add(f"{phase}_launches", name, setting,
                  **launches(suite, run, timed["ms_per_image"] * images_per_run))


def precisions(device: torch.device) -> list[str]:
    """bf16 autocast and fp32 on a GPU (TF32 allowed); fp32 alone on a CPU."""
    return ["bf16", "fp32"] if device.type == "cuda" else ["fp32"]


def autocast(device: torch.device, precision: str) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def compare(suite: Suite, phase: str, setting: str, ours: dict[str, float],
            reference: dict[str, float], reference_name: str) -> None:
    suite.add(phase, "ours", setting, **ours,
              vs_reference=f"{ours['images_per_s'] / reference['images_per_s']:.2f}x "
                           f"{reference_name}'s images/s")
    suite.add(phase, reference_name, setting, **reference)


# ---- data ----

def phase_data(suite: Suite) -> None:
    s = suite.sizes
    start = time.perf_counter()
    generate(suite.data / "synthetic", num_train=s.scenes, num_val=2, size=s.scene,
             cls_train_per_class=1, cls_val_per_class=1, overwrite=True)
    rng = np.random.default_rng(0)
    folder = suite.data / "imagefolder"
    for split, count in (("train", s.cls_images), ("val", NUM_CLASSES)):
        for i in range(count):
            label = i % NUM_CLASSES
            path = folder / split / f"class_{label}" / f"{i:06d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            image, _ = compose_scene(rng, 375, 500, min_objects=1, max_objects=3)
            cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    suite.add("data", "synthetic", f"{s.scenes} scenes {s.scene}, {s.cls_images} JPEGs",
              seconds=time.perf_counter() - start)


def _data_overrides(suite: Suite) -> list[str]:
    root = suite.data / "synthetic"
    h, w = suite.sizes.scene
    return [f"data.train.ann_file={root}/coco/train.json",
            f"data.train.img_dir={root}/images/train",
            f"data.val.ann_file={root}/coco/val.json", f"data.val.img_dir={root}/images/val",
            f"data.train.min_size={min(h, w)}", f"data.train.max_size={max(h, w)}",
            f"data.val.min_size={min(h, w)}", f"data.val.max_size={max(h, w)}",
            "data.train.hflip_prob=0.0", "model.backbone.weights=null",
            f"model.backbone.name={suite.sizes.backbone}"]


def detection_samples(suite: Suite, mask_on: bool) -> list[dict[str, Tensor]]:
    """The training scenes through our data pipeline (resized to the scene size)."""
    from resnet_detect.detection.data import build_datasets
    config = "mask_rcnn_R_50_FPN_1x" if mask_on else "faster_rcnn_R_50_FPN_1x"
    _, cfg = load_task_config(ROOT / f"configs/detection/{config}.yaml", _data_overrides(suite))
    dataset = build_datasets(cfg).train
    return [dataset[(i, 0)] for i in range(suite.sizes.det_batch)]


# ---- detection ----

def detection_batch(suite: Suite, mask_on: bool) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """The training scenes' images and our targets, on the suite's device."""
    device = suite.device
    samples = detection_samples(suite, mask_on)
    keys = ("gt_boxes", "gt_classes", *(("gt_masks",) if mask_on else ()))
    return ([s["image"].to(device) for s in samples],
            [{k: s[k].to(device) for k in keys} for s in samples])


def detectors(suite: Suite, mask_on: bool) -> tuple[nn.Module, nn.Module]:
    """Ours (from the 1x config) and torchvision's, both FrozenBN with conv1 + res2 frozen."""
    config = "mask_rcnn_R_50_FPN_1x" if mask_on else "faster_rcnn_R_50_FPN_1x"
    smoke = suite.sizes.backbone != "resnet50"
    _, cfg = load_task_config(ROOT / f"configs/detection/{config}.yaml",
                              [*_data_overrides(suite), f"model.num_classes={NUM_CLASSES}",
                               *(SMOKE_OVERRIDES if smoke else [])])
    torch.manual_seed(0)
    ours = build_model(cfg)
    meta = MaskRCNN if mask_on else FasterRCNN
    reference = meta(resnet_fpn_backbone(backbone_name=suite.sizes.backbone, weights=None,
                                         trainable_layers=3),
                     num_classes=NUM_CLASSES + 1, _skip_resize=True,
                     min_size=min(suite.sizes.scene), max_size=max(suite.sizes.scene),
                     **(SMOKE_DETECTOR if smoke else {}))  # its test-time resize: none here
    return ours.to(suite.device), reference.to(suite.device)


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                precision: str, losses: Callable[[], dict[str, Tensor]]) -> Callable[[], None]:
    # TF32 matrix products in the fp32 rows alone: a bf16 training runs its float32 products
    # (the upsampling's backward as matrix products, say) as PyTorch's default has them, exact
    tf32 = precision == "fp32"

    def step() -> None:
        allowed = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            with autocast(device, precision):
                loss = sum(losses().values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = allowed
    return step


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001,
                           momentum=0.9, weight_decay=1e-4)


def phase_detection_train(suite: Suite, mask_on: bool = False) -> None:
    phase = "mask_train" if mask_on else "det_train"
    device = suite.device
    images, ours_targets = detection_batch(suite, mask_on)
    tv_targets = [{"boxes": t["gt_boxes"], "labels": t["gt_classes"] + 1,
                   **({"masks": t["gt_masks"]} if mask_on else {})} for t in ours_targets]
    ours, reference = detectors(suite, mask_on)
    ours.train(), reference.train()
    # the mask head's convolutions get another RoI count at every step: with
    # cudnn.benchmark cuDNN times its algorithms anew at each (run 5: Mask R-CNN steps
    # 3.8x slower), so Mask R-CNN runs without it, as train.cudnn_benchmark's default
    settings = [(precision, layout, torch.backends.cudnn.benchmark and not mask_on)
                for precision, layout in _settings(device)]
    if device.type == "cuda" and not mask_on:
        # the detection configs' default (train.cudnn_benchmark: off, for multi-scale
        # training's many shapes); the rows above are cuDNN's best for this one shape
        settings.append(("bf16", torch.contiguous_format, False))
    for index, (precision, layout, benchmark) in enumerate(settings):
        with cudnn_benchmark(benchmark):
            set_layout((ours, reference), device, layout)
            ours_step = _train_step(ours, _sgd(ours), device, precision,
                                    lambda: ours(images, ours_targets))
            tv_step = _train_step(reference, _sgd(reference), device, precision,
                                  lambda: reference([i.float() / 255 for i in images],
                                                    tv_targets))
            off = device.type == "cuda" and not benchmark
            setting = (f"{precision}{_LAYOUT_NAMES[layout]}{', cudnn.benchmark off' if off else ''}"
                       f", batch {len(images)}")
            ours_m = measure(suite, ours_step, len(images))
            tv_m = measure(suite, tv_step, len(images))
            compare(suite, phase, setting, ours_m, tv_m, "torchvision")
            if index == 0:
                add_launch_rows(suite, phase, setting, len(images),
                                [("ours", ours_step, ours_m), ("torchvision", tv_step, tv_m)])
    set_layout((ours,), device, torch.contiguous_format)


@contextmanager
def cudnn_benchmark(on: bool) -> Iterator[None]:
    """torch.backends.cudnn.benchmark set to `on` inside, as it was after."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


_LAYOUT_NAMES = {torch.contiguous_format: "", torch.channels_last: ", channels_last"}


def _settings(device: torch.device, channels_last: bool = False
              ) -> list[tuple[str, torch.memory_format]]:
    """Each precision with the default layout; on a GPU with `channels_last` each also with
    channels_last weights (every convolution then runs NHWC: the model.channels_last lever,
    measured on both models). The detectors' rows leave it out since run 5: their configs
    keep it off (runs 4 and 5: bf16 0.96x and 0.97x, fp32 1.06x training)."""
    settings = [(precision, torch.contiguous_format) for precision in precisions(device)]
    if device.type == "cuda" and channels_last:
        settings += [(precision, torch.channels_last) for precision in precisions(device)]
    return settings


def set_layout(models: tuple[nn.Module, ...], device: torch.device,
               layout: torch.memory_format) -> None:
    """Every model's weights NCHW, or channels_last as model.channels_last makes them."""
    for model in models:
        model.to(memory_format=torch.contiguous_format)
        if layout == torch.channels_last:
            place_model(model, device, channels_last=True)
            assert device.type != "cuda" or all(
                m.weight.is_contiguous(memory_format=torch.channels_last)
                for m in model.modules() if isinstance(m, nn.Conv2d))


def phase_detection_compile(suite: Suite) -> None:
    """Ours in bf16 with train.compile (the backbone + FPN under inductor on a GPU; the eager
    backend in --smoke) vs the same model eager and torchvision's eager step, and the seconds
    of the first (compiling) step. Runs 4 and 5 also compiled the RPN and box heads: slower
    (1.09x and 1.13x eager against 1.20x and 1.22x), not measured since."""
    device = suite.device
    images, targets = detection_batch(suite, mask_on=False)
    tv_targets = [{"boxes": t["gt_boxes"], "labels": t["gt_classes"] + 1} for t in targets]
    ours, reference = detectors(suite, mask_on=False)
    ours.train(), reference.train()
    precision = precisions(device)[0]
    setting = f"{precision}, batch {len(images)}"
    tv = measure(suite, _train_step(reference, _sgd(reference), device, precision,
                                    lambda: reference([i.float() / 255 for i in images],
                                                      tv_targets)), len(images))
    eager = measure(suite, _train_step(ours, _sgd(ours), device, precision,
                                       lambda: ours(images, targets)), len(images))
    compile_model(ours, "inductor" if device.type == "cuda" else "eager", device)  # train.compile
    add_compiled(suite, "det_compile", "ours, backbone+FPN compiled (train.compile)", setting,
                 _train_step(ours, _sgd(ours), device, precision, lambda: ours(images, targets)),
                 len(images), eager, tv)
    compare(suite, "det_compile", setting, eager, tv, "torchvision")


NMS_STREAMS = 4  # det_nms: the side streams (and host threads) of the streams lever


def phase_detection_nms(suite: Suite) -> None:
    """Ours in bf16 at det_train's batch with the RPN's per-image NMS on one stream (the
    default) vs two levers: on NMS_STREAMS side streams (RPN.nms_streams), and every image
    and level at once as padded matrix products (RPN.padded_nms). A profile of this step on
    an H200 (torch 2.11) had torchvision's gather_keep_from_mask, one block walking the
    sorted boxes, as its top kernel, 16 calls of ~2.2 ms per step, the host waiting for each.
    Each setting is timed from the same weights, and its RPN proposals of a training step
    (the training top-k, the timed one) and its detections are compared with the per-image
    NMS's, image by image (the per-image NMS run twice: is the device itself repeatable?); a
    lever that fails is recorded and the other still measured. --smoke: fp32 on the CPU,
    which ignores the streams."""
    device = suite.device
    images, targets = detection_batch(suite, mask_on=False)
    ours, _ = detectors(suite, mask_on=False)
    precision = precisions(device)[0]
    setting = f"{precision}, batch {len(images)}"
    start = {k: v.clone() for k, v in ours.state_dict().items()}
    one = "ours, RPN NMS per image on one stream"
    levers = {f"ours, RPN NMS on {NMS_STREAMS} streams": {"nms_streams": NMS_STREAMS},
              "ours, RPN NMS as padded matrix products": {"padded_nms": True}}

    def use(lever: dict[str, Any]) -> None:
        ours.rpn.nms_streams = lever.get("nms_streams", 0)
        ours.rpn.padded_nms = lever.get("padded_nms", False)

    def outputs() -> tuple[list[Tensor], list[Tensor]]:
        """(proposals of a training step, detections), from the start weights."""
        ours.load_state_dict(start)
        proposals: list[list[Tensor]] = []
        hook = ours.rpn.register_forward_hook(
            lambda module, args, out: proposals.append([p["boxes"] for p in out[0]]))
        try:
            with torch.no_grad(), autocast(device, precision):
                ours.train()
                ours(images, targets)
                ours.eval()
                detections = [d["boxes"] for d in ours(images)]
        finally:
            hook.remove()
        return proposals[0], detections

    def timed() -> tuple[dict[str, float], Callable[[], None]]:
        ours.load_state_dict(start)
        ours.train()
        step = _train_step(ours, _sgd(ours), device, precision, lambda: ours(images, targets))
        return measure(suite, step, len(images)), step

    def differing(a: list[Tensor], b: list[Tensor]) -> int:
        return sum(not torch.equal(x, y) for x, y in zip(a, b))

    use({})
    baseline, again = outputs(), outputs()
    base_m, _ = timed()
    suite.add("det_nms", one, setting, **base_m,
              proposals=sum(len(p) for p in baseline[0]),
              detections=sum(len(d) for d in baseline[1]),
              images_differing_when_repeated=differing(baseline[0], again[0])
              + differing(baseline[1], again[1]))
    for name, lever in levers.items():
        try:
            use(lever)
            proposals, detections = outputs()
            lever_m, step = timed()
            suite.add("det_nms", name, setting, **lever_m,
                      images_with_other_proposals=differing(baseline[0], proposals),
                      images_with_other_detections=differing(baseline[1], detections),
                      vs_reference=f"{lever_m['images_per_s'] / base_m['images_per_s']:.2f}x "
                                   f"one stream")
            # the kernels and GPU busy time with the lever on (det_train_launches has them
            # without); the ops the NMS threads dispatch are not counted (per-thread modes)
            add_launch_rows(suite, "det_nms", setting, len(images), [(name, step, lever_m)])
        except Exception:  # recorded; the other lever is still measured
            suite.errors[f"det_nms: {name}"] = traceback.format_exc()
            print(f"det_nms: {name} failed:\n{suite.errors[f'det_nms: {name}']}",
                  file=sys.stderr, flush=True)
        finally:
            use({})


@contextmanager
def fused_convolutions(on: bool) -> Iterator[dict[str, int]]:
    """fused_conv.FUSE_ON_CUDA set to `on`, no refusal remembered from before, and the fused
    calls counted (a refusal is then seen: fewer calls, and fused_conv.refusals)."""
    from resnet_detect.backbones import fused_conv
    counts = {"calls": 0}
    kernels = (fused_conv.cudnn_convolution_relu, fused_conv.cudnn_convolution_add_relu)

    def counted(kernel: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def call(*args: Any) -> Tensor:
            counts["calls"] += 1
            return kernel(*args)
        return call
    before = fused_conv.FUSE_ON_CUDA
    fused_conv.FUSE_ON_CUDA = on
    fused_conv.refusals.clear()
    fused_conv.cudnn_convolution_relu, fused_conv.cudnn_convolution_add_relu = map(counted,
                                                                                    kernels)
    try:
        yield counts
    finally:
        fused_conv.FUSE_ON_CUDA = before
        fused_conv.cudnn_convolution_relu, fused_conv.cudnn_convolution_add_relu = kernels


def fused_kernel_check(device: torch.device) -> dict[str, float]:
    """cuDNN's fused kernels against relu(conv2d(...) + bias [+ z]) on one map of R50's res3
    shape, in each precision, the output's memory filled with NaN beforehand (the op without
    an addend hands cuDNN its uninitialised output as the addend, times 0): the largest
    difference relative to the largest value, and the NaNs in the fused output."""
    gen = torch.Generator(device).manual_seed(0)
    result = {}
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(16, 128, 100, 168, device=device, generator=gen, dtype=dtype)
        w = torch.randn(128, 128, 3, 3, device=device, generator=gen, dtype=dtype) * 0.03
        b = torch.randn(128, device=device, generator=gen, dtype=dtype)
        z = torch.randn(16, 128, 100, 168, device=device, generator=gen, dtype=dtype)
        for addend in (None, z):
            reference = F.conv2d(x.float(), w.float(), b.float(), padding=1)
            reference = F.relu(reference if addend is None else reference + addend.float())
            torch.full_like(x, float("nan"))  # freed at once: its memory is reused next
            if addend is None:
                got = torch.cudnn_convolution_relu(x, w, b, [1, 1], [1, 1], [1, 1], 1)
            else:
                got = torch.cudnn_convolution_add_relu(x, w, addend, 1.0, b, [1, 1], [1, 1],
                                                       [1, 1], 1)
            name = f"{str(dtype).removeprefix('torch.')}{'' if addend is None else ', addend'}"
            result[f"{name}: relative difference"] = float(
                (got.float() - reference).abs().max() / reference.abs().max())
            result[f"{name}: NaNs"] = int(got.isnan().sum())
    return result


def _matched_detections(plain: dict[str, Tensor], fused: dict[str, Tensor]) -> dict[str, Any]:
    """Of the fused detections, how many overlap a plain one of the same class at IoU >= 0.9,
    and the largest score difference of those pairs."""
    if not len(plain["boxes"]) or not len(fused["boxes"]):
        return {"matched_detections": 0, "largest_score_difference": None}
    iou = torchvision.ops.box_iou(fused["boxes"].float(), plain["boxes"].float())
    iou[fused["labels"][:, None] != plain["labels"][None, :]] = 0
    best, index = iou.max(1)
    matched = best >= 0.9
    gaps = (fused["scores"][matched].float() - plain["scores"][index[matched]].float()).abs()
    return {"matched_detections": int(matched.sum()),
            "largest_score_difference": float(gaps.max()) if len(gaps) else None}


def phase_detection_fusion(suite: Suite) -> None:
    """Ours with each convolution's bias (the folded frozen BatchNorm), ReLU and residual
    addition fused into one cuDNN call (backbones.fused_conv) vs the plain convolutions, from
    the same weights, and torchvision's step in the same process: training in bf16 at
    det_train's batch, NCHW and (on a GPU) channels_last, the plain step timed before and
    after the fused one (images/s; the losses of the first step, and after the timed steps,
    which went through the fused backward; fused calls per forward; one step at a new size:
    cuDNN's per-shape plans), and inference at batch 1 in bf16 and fp32 (ms/image, the
    detections matched). On a GPU first cuDNN's fused kernels alone against the plain ops.
    Run 5's bf16 training step spent 15 of 148 ms of GPU time in the 76 bias additions
    alone. --smoke: the CPU has no fused kernels, all of ours are the plain path (0 fused
    calls)."""
    from resnet_detect.backbones import fused_conv
    device = suite.device
    if device.type == "cuda":
        try:
            check = fused_kernel_check(device)
        except RuntimeError as e:  # (a cuDNN without such an engine: the rows below still run)
            check = {"error": f"{type(e).__name__}: {e}"[:300]}
        suite.add("det_fusion", "cuDNN's fused kernels", "(16, 128, 100, 168), 3x3", **check)
    images, targets = detection_batch(suite, mask_on=False)
    tv_targets = [{"boxes": t["gt_boxes"], "labels": t["gt_classes"] + 1} for t in targets]
    ours, reference = detectors(suite, mask_on=False)
    reference.train()
    start = {k: v.clone() for k, v in ours.state_dict().items()}
    precision = precisions(device)[0]
    names = {False: "ours, plain convolutions", True: "ours, conv+bias+ReLU fused (cuDNN)"}
    tv = measure(suite, _train_step(reference, _sgd(reference), device, precision,
                                    lambda: reference([i.float() / 255 for i in images],
                                                      tv_targets)), len(images))

    def losses() -> dict[str, float]:
        torch.manual_seed(1)
        with torch.no_grad(), autocast(device, precision):
            return {k: float(v) for k, v in ours(images, targets).items()}

    layouts = [torch.contiguous_format, *([torch.channels_last] if device.type == "cuda" else [])]
    new_sizes = itertools.count(1)
    for layout in layouts:
        set_layout((ours,), device, layout)
        setting = f"{precision}{_LAYOUT_NAMES[layout]}, batch {len(images)}"
        timed: list[dict[str, float]] = []
        for on in (False, True, False):
            ours.load_state_dict(start)
            ours.train()
            with fused_convolutions(on) as counts:
                first = losses()
                calls = counts["calls"]
                step = _train_step(ours, _sgd(ours), device, precision,
                                   lambda: ours(images, targets))
                torch.manual_seed(0)  # the samplers' draws
                measured = measure(suite, step, len(images))
                after = losses()
                # one step at a size no run has seen yet, as a new training size gives with
                # train.cudnn_benchmark's default (off: cuDNN's heuristics build the plans)
                pad = 32 * next(new_sizes)
                larger = [F.pad(i, (0, pad, 0, pad)) for i in images]
                with cudnn_benchmark(False):
                    measured["new_size_step_s"] = _seconds(_train_step(
                        ours, _sgd(ours), device, precision, lambda: ours(larger, targets)),
                        device)
                timed.append(measured)
                versus = f"{measured['images_per_s'] / tv['images_per_s']:.2f}x torchvision"
                if on:
                    ratio = measured["images_per_s"] / timed[0]["images_per_s"]
                    versus = (f"{ratio:.2f}x plain before it, {versus}, {calls} fused calls "
                              f"per forward, a step at a new size "
                              f"{measured['new_size_step_s']:.2f} s (plain "
                              f"{timed[0]['new_size_step_s']:.2f} s)")
                elif len(timed) == 3:
                    ratio = timed[1]["images_per_s"] / measured["images_per_s"]
                    versus = f"the fused step: {ratio:.2f}x this one, {versus}"
                suite.add("det_fusion", names[on] + (", again" if len(timed) == 3 else ""),
                          setting, **measured, vs_reference=versus, first_losses=first,
                          losses_after_steps=after, fused_calls=calls,
                          refusals=dict(fused_conv.refusals) if on else None)
                if on or (layout == torch.channels_last and len(timed) == 1):
                    add_launch_rows(suite, "det_fusion", setting, len(images),
                                    [(names[on], step, measured)])
    set_layout((ours,), device, torch.contiguous_format)
    suite.add("det_fusion", "torchvision", f"{precision}, batch {len(images)}", **tv)
    ours.load_state_dict(start)
    ours.eval()
    image = _inference_image(suite)
    for precision in precisions(device):
        setting = f"{precision}, batch 1"
        results = {}
        for on in (False, True):
            with fused_convolutions(on) as counts, torch.inference_mode(), \
                    autocast(device, precision):
                got = ours([image])[0]
                calls = counts["calls"]
                results[on] = (got, measure(suite, lambda: ours([image]), 1), calls,
                               dict(fused_conv.refusals))
        (plain, plain_m, _, _), (fused, fused_m, calls, refused) = results[False], results[True]
        matched = _matched_detections(plain, fused)
        suite.add("det_fusion", names[False], setting, **plain_m,
                  detections=len(plain["boxes"]))
        suite.add("det_fusion", names[True], setting, **fused_m, detections=len(fused["boxes"]),
                  **matched, fused_calls=calls, refusals=refused,
                  vs_reference=f"{plain_m['ms_per_image'] / fused_m['ms_per_image']:.2f}x "
                               f"plain's speed, {matched['matched_detections']} of "
                               f"{len(fused['boxes'])} detections matched, {calls} fused calls")


def phase_mask_bucket(suite: Suite) -> None:
    """Mask R-CNN in bf16 at det_train's batch with the mask head's RoIs padded to a multiple
    of sizes.mask_bucket (MaskRCNNHead.roi_bucket) vs as they come, from the same weights, with
    cudnn.benchmark off (the product's default) and, padded, on; torchvision's step in the
    same process. Run 5: the mask head's convolutions see a new RoI count at every step, and
    the step's GPU was busy 158 of 218 ms (Faster R-CNN: 148 of 176), cudnn.benchmark on made
    it 3.8x slower. Each row: the first step's mask loss, and the distinct RoI counts the
    head's first convolution saw over the timed steps."""
    device = suite.device
    images, targets = detection_batch(suite, mask_on=True)
    tv_targets = [{"boxes": t["gt_boxes"], "labels": t["gt_classes"] + 1,
                   "masks": t["gt_masks"]} for t in targets]
    ours, reference = detectors(suite, mask_on=True)
    ours.train(), reference.train()
    head = ours.roi_heads.mask_head
    start = {k: v.clone() for k, v in ours.state_dict().items()}
    precision = precisions(device)[0]
    counts: list[int] = []
    hook = head.mask_fcn1.register_forward_pre_hook(
        lambda module, args: counts.append(int(args[0].shape[0])))
    try:
        with cudnn_benchmark(False):
            tv = measure(suite, _train_step(reference, _sgd(reference), device, precision,
                                            lambda: reference([i.float() / 255 for i in images],
                                                              tv_targets)), len(images))
        plain: dict[str, float] = {}
        bucket_size = suite.sizes.mask_bucket
        for bucket, benchmark in ((0, False), (bucket_size, False), (bucket_size, True)):
            with cudnn_benchmark(benchmark):
                head.roi_bucket = bucket
                ours.load_state_dict(start)
                torch.manual_seed(0)  # the samplers' draws
                with torch.no_grad(), autocast(device, precision):
                    mask_loss = float(ours(images, targets)["loss_mask"])
                step = _train_step(ours, _sgd(ours), device, precision,
                                   lambda: ours(images, targets))
                counts.clear()
                timed = measure(suite, step, len(images))
                shapes = sorted(set(counts[-suite.sizes.steps:]))
                name = (f"ours, RoIs padded to a multiple of {bucket}" if bucket
                        else "ours, RoIs as they come")
                setting = (f"{precision}, cudnn.benchmark {'on' if benchmark else 'off'}, "
                           f"batch {len(images)}")
                versus = f"{timed['images_per_s'] / tv['images_per_s']:.2f}x torchvision"
                if bucket:
                    ratio = timed["images_per_s"] / plain["images_per_s"]
                    versus = f"{ratio:.2f}x as they come, {versus}"
                else:
                    plain = timed
                suite.add("mask_bucket", name, setting, **timed, vs_reference=versus,
                          loss_mask=mask_loss, convolved_roi_counts=shapes)
                add_launch_rows(suite, "mask_bucket", setting, len(images), [(name, step, timed)])
        suite.add("mask_bucket", "torchvision",
                  f"{precision}, cudnn.benchmark off, batch {len(images)}", **tv)
    finally:
        hook.remove()
        head.roi_bucket = 0


def _seconds(run: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of `run`, the device's queue drained before and after."""
    _sync(device)
    start = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - start


def add_compiled(suite: Suite, phase: str, name: str, setting: str, step: Callable[[], None],
                 images_per_step: int, eager: dict[str, float],
                 reference: dict[str, float] | None = None) -> None:
    """A row for a compiled training step: its first (compiling) step timed apart, then
    measured against the eager model's `eager` (and torchvision's `reference`)."""
    first_step = _seconds(step, suite.device)
    compiled = measure(suite, step, images_per_step)
    versus = f"{compiled['images_per_s'] / eager['images_per_s']:.2f}x eager"
    if reference is not None:
        versus += f", {compiled['images_per_s'] / reference['images_per_s']:.2f}x torchvision"
    suite.add(phase, name, setting, **compiled, first_step_s=first_step,
              vs_reference=f"{versus}, first step {first_step:.0f} s")


class SyncCounter(TorchFunctionMode):
    """Counts the Python-visible calls that make the host wait for the device: reading a
    value (.item, .tolist, bool/int/float of a tensor), data-dependent shapes (nonzero, unique,
    boolean-mask indexing) and copies to the host. Syncs inside C++ ops (e.g. NMS) are not
    seen here; on a GPU `torch.cuda.set_sync_debug_mode` counts those too."""

    CALLS = {Tensor.item, Tensor.tolist, Tensor.__bool__, Tensor.__int__, Tensor.__float__,
             Tensor.__index__, Tensor.nonzero, torch.nonzero, Tensor.unique, torch.unique,
             torch.argwhere, Tensor.cpu, Tensor.numpy, torch.masked_select,
             Tensor.masked_select}

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = defaultdict(int)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if func in self.CALLS or (func is torch.where and len(args) + len(kwargs) == 1):
            self.counts[name] += 1
        elif func in (Tensor.__getitem__, Tensor.__setitem__) and any(
                isinstance(i, Tensor) and i.dtype == torch.bool
                for i in (args[1] if isinstance(args[1], tuple) else (args[1],))):
            self.counts[f"{name} with a bool mask"] += 1
        return func(*args, **kwargs)


def phase_syncs(suite: Suite) -> None:
    """Host syncs in one Faster R-CNN training step, ours vs torchvision's, same batch."""
    device = suite.device
    images, targets = detection_batch(suite, mask_on=False)
    tv_targets = [{"boxes": t["gt_boxes"], "labels": t["gt_classes"] + 1} for t in targets]
    ours, reference = detectors(suite, mask_on=False)
    runs = {"ours": lambda: ours(images, targets),
            "torchvision": lambda: reference([i.float() / 255 for i in images], tv_targets)}
    for name, run in runs.items():
        model = ours if name == "ours" else reference
        model.train()
        counter = SyncCounter()
        with counter:
            loss = sum(run().values())
            loss.backward()
        row = {"python_syncs": sum(counter.counts.values()), "by_call": dict(counter.counts)}
        row["vs_reference"] = f"{row['python_syncs']} Python-visible syncs"
        if device.type == "cuda":  # every sync, C++ ones included
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    sum(run().values()).backward()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            # the sync debug mode's warnings only: neither another warning of the step nor its
            # one-time notice of a process's first use ("Synchronization debug mode is a
            # prototype feature ...", seen on the H200 by a reviewer)
            syncs = sum("called a synchronizing CUDA operation" in str(w.message)
                        for w in caught)
            row["cuda_syncs"] = syncs
            row["vs_reference"] += f", {syncs} in all (CUDA sync debug mode)"
        suite.add("syncs", name, f"one training step, batch {len(images)}", **row)


def _inference_image(suite: Suite) -> Tensor:
    image, _ = compose_scene(np.random.default_rng(1), *suite.sizes.scene, min_objects=4,
                             max_objects=10)
    return torch.from_numpy(image).permute(2, 0, 1).contiguous().to(suite.device)


def phase_detection_inference(suite: Suite) -> None:
    device = suite.device
    ours, reference = detectors(suite, mask_on=False)
    reference.eval()
    load_detector_weights(ours, reference.state_dict())
    ours.eval()
    image = _inference_image(suite)
    for precision, layout in _settings(device):
        set_layout((ours, reference), device, layout)
        with torch.inference_mode(), autocast(device, precision):
            got, expected = ours([image])[0], reference([image.float() / 255])[0]
            same = (len(got["boxes"]) == len(expected["boxes"])
                    and bool(torch.equal(got["labels"] + 1, expected["labels"])))

            def run_ours() -> None:
                ours([image])

            def run_reference() -> None:
                reference([image.float() / 255])
            ours_m, ref_m = measure(suite, run_ours, 1), measure(suite, run_reference, 1)
            setting = f"{precision}{_LAYOUT_NAMES[layout]}, batch 1"
            suite.add("det_infer", "ours", setting, **ours_m,
                      same_detections=same, detections=len(got["boxes"]),
                      vs_reference=f"{ref_m['ms_per_image'] / ours_m['ms_per_image']:.2f}x "
                                   "torchvision's speed")
            suite.add("det_infer", "torchvision", setting, **ref_m)
            if layout == torch.contiguous_format:
                add_launch_rows(suite, "det_infer", setting, 1,
                                [("ours", run_ours, ours_m), ("torchvision", run_reference, ref_m)])


def phase_detection_inference_compile(suite: Suite) -> None:
    """Ours at batch 1 with the backbone + FPN under torch.compile (test.compile) against the
    same model eager: inductor, then inductor with CUDA graphs (test.compile_mode
    reduce-overhead: the backbone's hundreds of kernels replayed from one launch, the lever if
    the host's launches bound inference). --smoke: the eager backend. Same weights and image
    as det_infer, in float32 as Predictor and tools/eval.py run (run 4 measured bf16)."""
    device = suite.device
    precision = "fp32"
    image = _inference_image(suite)
    variants: list[tuple[str, str | None, str | None]] = [("eager", None, None)]
    if device.type == "cuda":
        variants += [("backbone+FPN compiled", "inductor", None),
                     ("backbone+FPN compiled, CUDA graphs", "inductor", "reduce-overhead")]
    else:
        variants += [("backbone+FPN compiled", "eager", None)]
    rows = []
    for name, backend, mode in variants:
        torch._dynamo.reset()
        ours, reference = detectors(suite, mask_on=False)
        load_detector_weights(ours, reference.state_dict())
        del reference
        ours.eval()
        compile_model(ours, backend, device, key="test.compile", mode=mode)  # as Predictor
        with torch.inference_mode(), autocast(device, precision):
            start = time.perf_counter()
            count = len(ours([image])[0]["boxes"])
            _sync(device)
            first_call = time.perf_counter() - start
            rows.append((name, measure(suite, lambda: ours([image]), 1), first_call, count))
    eager_ms = rows[0][1]["ms_per_image"]
    for name, measured, first_call, count in rows:
        suite.add("det_infer_compile", f"ours, {name}", f"{precision}, batch 1", **measured,
                  first_call_s=first_call, detections=count,
                  vs_reference=f"{eager_ms / measured['ms_per_image']:.2f}x eager's speed, "
                               f"first call {first_call:.1f} s")


# ---- segmentation ----

@dataclass
class SegmentationRun:
    """DeepLabV3-R50 OS8 (ours, from its config) and torchvision's, with their losses on one
    batch of crops."""

    ours: nn.Module
    reference: nn.Module
    ours_losses: Callable[[], dict[str, Tensor]]
    reference_losses: Callable[[], dict[str, Tensor]]
    batch: int


def segmentation_run(suite: Suite) -> SegmentationRun:
    from torchvision.models.segmentation import deeplabv3_resnet50

    from resnet_detect.segmentation.build import build_model as build_segmentor
    from resnet_detect.segmentation.data import build_dataset
    device, s = suite.device, suite.sizes
    root = suite.data / "synthetic"
    _, cfg = load_task_config(ROOT / "configs/segmentation/deeplabv3_R_50_os8.yaml", [
        f"data.train.img_dir={root}/images/train", f"data.train.mask_dir={root}/semantic/train",
        f"data.val.img_dir={root}/images/val", f"data.val.mask_dir={root}/semantic/val",
        f"data.class_names={root}/semantic/classes.json",
        f"data.train.crop_size=[{s.seg_crop},{s.seg_crop}]", "model.backbone.weights=null",
        "model.backbone.multi_grid=null"])
    dataset = build_dataset(cfg, "train")
    samples = [dataset[(i % len(dataset), i)] for i in range(s.seg_batch)]
    images = [x["image"].to(device) for x in samples]
    targets = [{"gt_sem_seg": x["gt_sem_seg"].to(device)} for x in samples]
    cfg.model.num_classes = dataset.num_classes
    torch.manual_seed(0)
    ours = build_segmentor(cfg).to(device).train()
    reference = deeplabv3_resnet50(weights=None, weights_backbone=None,
                                   num_classes=dataset.num_classes, aux_loss=True)
    reference = reference.to(device).train()
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    gt = torch.stack([t["gt_sem_seg"] for t in targets]).long()

    def reference_losses() -> dict[str, Tensor]:
        out = reference((torch.stack(images).float() / 255 - mean) / std)  # uint8 in, as ours
        return {"main": F.cross_entropy(out["out"], gt, ignore_index=255),
                "aux": 0.4 * F.cross_entropy(out["aux"], gt, ignore_index=255)}

    return SegmentationRun(ours, reference, lambda: ours(images, targets), reference_losses,
                           len(images))


def phase_segmentation_train(suite: Suite) -> None:
    device, s = suite.device, suite.sizes
    run = segmentation_run(suite)
    for precision, layout in _settings(device, channels_last=True):
        set_layout((run.ours, run.reference), device, layout)
        ours_step = _train_step(run.ours, _sgd(run.ours), device, precision, run.ours_losses)
        ref_step = _train_step(run.reference, _sgd(run.reference), device, precision,
                               run.reference_losses)
        setting = f"{precision}{_LAYOUT_NAMES[layout]}, batch {run.batch}, {s.seg_crop}px"
        ours_m = measure(suite, ours_step, run.batch)
        ref_m = measure(suite, ref_step, run.batch)
        compare(suite, "seg_train", setting, ours_m, ref_m, "torchvision")
        if precision == precisions(device)[0]:
            add_native_upsample_row(suite, setting, ours_step, ours_m, run.batch)
        if (precision, layout) == _settings(device, channels_last=True)[0]:
            add_launch_rows(suite, "seg_train", setting, run.batch,
                            [("ours", ours_step, ours_m), ("torchvision", ref_step, ref_m)])


def add_native_upsample_row(suite: Suite, setting: str, step: Callable[[], None],
                            ours: dict[str, float], images_per_step: int) -> None:
    """Ours with PyTorch's own backward of the bilinear upsampling (atomic adds on a GPU)
    instead of segmentation/upsample.py's matrix products; on a CPU both are PyTorch's."""
    upsample.MATMUL_BACKWARD_ON_CUDA = False
    try:
        native = measure(suite, step, images_per_step)
    finally:
        upsample.MATMUL_BACKWARD_ON_CUDA = True
    suite.add("seg_train", "ours, PyTorch's upsample backward", setting, **native,
              vs_reference=f"{native['images_per_s'] / ours['images_per_s']:.2f}x ours "
                           f"(upsample backward as matrix products)")


def phase_segmentation_compile(suite: Suite) -> None:
    """Ours with train.compile (the backbone and the heads; run 5: 1.37x eager, the backbone
    alone 1.19x) against the same model eager and torchvision's eager step: bf16 and
    channels_last on a GPU (the segmentation configs' model.channels_last), the eager backend
    in --smoke."""
    device, s = suite.device, suite.sizes
    run = segmentation_run(suite)
    precision = precisions(device)[0]
    set_layout((run.ours, run.reference), device, torch.channels_last)
    setting = f"{precision}, channels_last, batch {run.batch}, {s.seg_crop}px"
    reference = measure(suite, _train_step(run.reference, _sgd(run.reference), device,
                                           precision, run.reference_losses), run.batch)
    eager = measure(suite, _train_step(run.ours, _sgd(run.ours), device, precision,
                                       run.ours_losses), run.batch)
    backend = "inductor" if device.type == "cuda" else "eager"
    compile_model(run.ours, backend, device)  # as train.compile does
    add_compiled(suite, "seg_compile", "ours, backbone and heads compiled (train.compile)",
                 setting, _train_step(run.ours, _sgd(run.ours), device, precision,
                                      run.ours_losses), run.batch, eager, reference)
    compare(suite, "seg_compile", setting, eager, reference, "torchvision")


# ---- pretraining ----

def phase_pretrain(suite: Suite) -> None:
    """tools/pretrain.py's step (ClassificationTask: uint8 batches collated in the workers,
    normalized on the device) fed by its loader, by nothing (the loader alone), and from one
    batch already on the device, vs torchvision's resnet50 on that batch."""
    from resnet_detect.backbones.pretraining import ClassificationTask
    from resnet_detect.engine.data import build_train_loader
    device, s = suite.device, suite.sizes
    _, cfg = load_task_config(ROOT / "configs/pretrain/resnet50_imagenet.yaml", [
        f"data.root={suite.data / 'imagefolder'}", f"data.image_size={s.cls_size}",
        f"data.val_resize={s.cls_size + s.cls_size // 7}", "train.batch_size=1"],
        task="classification")
    task = ClassificationTask()
    data = task.prepare(cfg)
    task.channels_last = device.type == "cuda"
    workers = 0 if device.type == "cpu" else (os.cpu_count() or 1)
    loader = iter(build_train_loader(data.train, batch_size=s.cls_batch, num_workers=workers,
                                     pin_memory=device.type == "cuda", rank=0, world_size=1,
                                     collate_fn=data.collate))
    arch = s.backbone
    torch.manual_seed(0)
    ours = build_classifier(arch, NUM_CLASSES).to(device).train()
    reference = getattr(torchvision.models, arch)(num_classes=NUM_CLASSES).to(device).train()
    if task.channels_last:
        ours = ours.to(memory_format=torch.channels_last)
        reference = reference.to(memory_format=torch.channels_last)
    fixed = next(loader).to(device)
    precision = precisions(device)[0]
    setting = f"{precision}, batch {s.cls_batch}, {s.cls_size}px"

    # The workers keep 2 batches each ready: empty that buffer, then time 3 times as many
    # batches, so the rate is the workers' steady production, not batches made beforehand.
    buffered = 2 * max(workers, 1)

    def drained(step: Callable[[], object]) -> dict[str, float]:
        for _ in range(buffered):
            next(loader)
        return measure(suite, step, s.cls_batch, steps=3 * buffered)

    loader_alone = drained(lambda: next(loader))
    suite.add("pretrain", f"JPEG loader alone ({workers} workers)",
              f"batch {s.cls_batch}, {s.cls_size}px, uint8, {3 * buffered} batches",
              images_per_s=loader_alone["images_per_s"],
              ms_per_image=loader_alone["ms_per_image"])
    loader_m = drained(_train_step(ours, _sgd(ours), device, precision,
                                   lambda: task.losses(ours, next(loader), device)))
    tensors_m = measure(suite, _train_step(ours, _sgd(ours), device, precision,
                                           lambda: task.losses(ours, fixed, device)),
                        s.cls_batch)
    ref_m = measure(suite, _train_step(reference, _sgd(reference), device, precision,
                                       lambda: task.losses(reference, fixed, device)),
                    s.cls_batch)
    suite.add("pretrain", f"ours {arch}, JPEG loader ({workers} workers)", setting, **loader_m,
              vs_reference=f"{loader_m['images_per_s'] / tensors_m['images_per_s']:.2f}x "
                           "the rate on GPU tensors")
    compare(suite, "pretrain", setting + ", tensors on device", tensors_m, ref_m, "torchvision")


# ---- torchrun ----

def torchrun_runs(suite: Suite) -> dict[str, list[str]]:
    """tool -> the arguments the torchrun phase gives it (--smoke: tools/train.py alone)."""
    device = "cuda" if suite.device.type == "cuda" else "cpu"
    common = ["train.max_iter=2", "train.checkpoint_period=1", "train.eval_period=0",
              "train.log_period=1", "train.warmup_iters=1", f"train.device={device}",
              "data.num_workers=1"]
    runs = {"train": [str(ROOT / "configs/detection/faster_rcnn_R_50_FPN_1x.yaml"),
                      *_data_overrides(suite), "train.batch_size=2", "data.val.ann_file=null",
                      "data.val.img_dir=null", "train.lr_steps=[]", *common]}
    if suite.sizes.backbone == "resnet50":
        runs["pretrain"] = [str(ROOT / "configs/pretrain/resnet50_imagenet.yaml"),
                            f"data.root={suite.data / 'imagefolder'}", "train.epochs=null",
                            "train.warmup_epochs=0", "train.lr_step_epochs=[]",
                            "train.batch_size=32", *common]
    return runs


def phase_torchrun(suite: Suite) -> None:
    device = "cuda" if suite.device.type == "cuda" else "cpu"
    for tool, args in torchrun_runs(suite).items():
        out = suite.output / f"torchrun_{tool}"
        start = time.perf_counter()
        launcher = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1",
             "--standalone", str(ROOT / f"tools/{tool}.py"), *args, f"train.output_dir={out}"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)})
        try:
            log, _ = launcher.communicate(timeout=TORCHRUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # torchrun ends its workers (own sessions, holding the pipe) on SIGTERM, with
            # SIGKILL after 30 s: the device time left goes to the phases after this one
            launcher.terminate()
            log, _ = launcher.communicate(timeout=90)
            log += f"\n(stopped after {TORCHRUN_TIMEOUT_S} s)"
        written = sorted(p.name for p in out.glob("model_*.pth"))
        ok = launcher.returncode == 0 and "model_final.pth" in written
        suite.add("torchrun", f"tools/{tool}.py", f"nproc 1, {device}",
                  exit_code=launcher.returncode, checkpoints=written,
                  seconds=time.perf_counter() - start, vs_reference="ok" if ok else "FAILED")
        if not ok:
            raise RuntimeError(f"torchrun tools/{tool}.py: exit {launcher.returncode}, "
                               f"checkpoints {written}\n{log[-6000:]}")


RUNNERS: dict[str, Callable[[Suite], None]] = {
    "data": phase_data, "det_train": phase_detection_train,
    "det_infer": phase_detection_inference, "syncs": phase_syncs,
    "mask_train": lambda suite: phase_detection_train(suite, mask_on=True),
    "seg_train": phase_segmentation_train, "pretrain": phase_pretrain, "torchrun": phase_torchrun,
    "det_compile": phase_detection_compile, "det_infer_compile": phase_detection_inference_compile,
    "seg_compile": phase_segmentation_compile, "det_nms": phase_detection_nms,
    "det_fusion": phase_detection_fusion, "mask_bucket": phase_mask_bucket}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="folder for suite.json and suite.md")
    parser.add_argument("--smoke", action="store_true", help="CPU, toy sizes, seconds")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(DEFAULT_PHASES),
                        help=f"default: {' '.join(DEFAULT_PHASES)}; the levers: "
                             f"{' '.join(LEVER_PHASES)}")
    parser.add_argument("--steps", type=int, help="timed steps per measurement")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.steps:
        sizes = Sizes(**{**sizes.__dict__, "steps": args.steps})
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_suite.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                         "--smoke runs it on the CPU at toy sizes")
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    suite = Suite(Path(args.output), sizes, device)
    phases = list(args.phases)
    if "data" not in phases and not (suite.data / "synthetic/meta.json").exists():
        phases.insert(0, "data")
    for phase in phases:
        start = time.perf_counter()
        try:
            RUNNERS[phase](suite)
        except Exception:  # recorded, and the other phases still run
            suite.errors[phase] = traceback.format_exc()
            print(f"phase {phase} failed:\n{suite.errors[phase]}", file=sys.stderr, flush=True)
        print(f"phase {phase}: {time.perf_counter() - start:.1f} s", flush=True)
        suite.write()
    print((suite.output / "suite.md").read_text(encoding="utf-8"), flush=True)
    return {**suite.info, "rows": suite.rows, "errors": suite.errors}


if __name__ == "__main__":
    result = main()
    sys.exit(1 if result["errors"] else 0)
