"""CPU inference: the exported ONNX graphs run by ONNX Runtime against our PyTorch models, in one
run, with the same outputs checked.

Usage: python benchmarks/onnx_speed.py [--repeats 5] [--threads N] [--skip detection|segmentation]

Models (random weights, seeded):
  detection     Faster R-CNN R50-FPN at 800x1067, batch 1, the weights of
                benchmarks/detection_speed.py (torchvision's layout, randomised so that the
                detections vary; score threshold 0.015).
  segmentation  DeepLabV3-R50 OS8 (configs/segmentation/deeplabv3_R_50_os8.yaml, 21 classes)
                at 512x512.
Each is exported with tools/export.py's code (detection.export / segmentation.export) and
timed alternately, round after round (benchmarks/timing.py), against PyTorch eager (our
`Predictor`'s path: channels_last on CPU, torch.inference_mode). ONNX Runtime runs with its
default graph optimisations (ORT_ENABLE_ALL) and, for comparison, with only the basic ones
(ORT_ENABLE_BASIC). Ratios are of medians: PyTorch seconds over ONNX Runtime's (> 1: ONNX
Runtime is faster).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import onnxruntime  # noqa: E402
import torch  # noqa: E402

from resnet_detect.detection.export import OnnxDetector, export_detector  # noqa: E402
from detection_speed import build_models, scene, summarize  # noqa: E402
from resnet_detect.engine.export import model_path  # noqa: E402
from resnet_detect.segmentation.build import build_model as build_segmentor  # noqa: E402
from resnet_detect.segmentation.build import load_config as load_seg_config  # noqa: E402
from resnet_detect.segmentation.export import OnnxSegmentor, export_segmentor  # noqa: E402
from timing import time_interleaved  # noqa: E402

SEG_CONFIG = ROOT / "configs/segmentation/deeplabv3_R_50_os8.yaml"


def basic_session(weights: Path, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(model_path(weights)), options,
                                        providers=["CPUExecutionProvider"])


def default_session(weights: Path, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # as many as torch uses
    return onnxruntime.InferenceSession(str(model_path(weights)), options,
                                        providers=["CPUExecutionProvider"])


def report(phase: str, times: dict[str, list[float]]) -> dict[str, dict]:
    summary = summarize(times, reference="pytorch")
    for name, r in summary.items():
        print(f"{phase:<13} {name:<11} {r['median_s']:7.3f} s/img  (min {r['min_s']:.3f}, max "
              f"{r['max_s']:.3f})  pytorch/this {r['ratio']:.3f}", flush=True)
    return summary


def bench_detection(folder: Path, repeats: int, threads: int) -> dict:
    model = build_models(score_thresh=0.015)["ours"].eval()
    export_detector(model, folder, class_names=[str(i) for i in range(90)],
                    category_ids=list(range(1, 91)), resize=(800, 1333))
    onnx_model, basic = OnnxDetector(folder), OnnxDetector(folder)
    onnx_model.session = default_session(folder, threads)
    basic.session = basic_session(folder, threads)
    image = scene(0)[0]
    with torch.inference_mode():
        expected = model([image])[0]
    got = onnx_model([image])[0]
    same = {"detections": [len(got["boxes"]), len(expected["boxes"])],
            "labels_equal": torch.equal(got["labels"], expected["labels"]),
            "max_box_diff_px": (got["boxes"] - expected["boxes"]).abs().max().item(),
            "max_score_diff": (got["scores"] - expected["scores"]).abs().max().item()}
    print(f"detection outputs: {same}", flush=True)
    times = time_interleaved({"pytorch": lambda: model([image]),
                              "onnx": lambda: onnx_model([image]),
                              "onnx_basic": lambda: basic([image])}, repeats)
    return {"outputs": same, "seconds": report("R50-FPN", times)}


def bench_segmentation(folder: Path, repeats: int, threads: int) -> dict:
    cfg = load_seg_config(SEG_CONFIG, ["model.num_classes=21", "model.backbone.weights=null",
                                       "model.backbone.multi_grid=null"])
    torch.manual_seed(0)
    model = build_segmentor(cfg).eval()
    export_segmentor(model, folder, class_names=[str(i) for i in range(21)],
                     example_size=(256, 320))
    onnx_model, basic = OnnxSegmentor(folder), OnnxSegmentor(folder)
    onnx_model.session = default_session(folder, threads)
    basic.session = basic_session(folder, threads)
    image = scene(3)[0][:, :512, :512].contiguous()
    with torch.inference_mode():
        expected = model([image])[0]["mask"]
    got = onnx_model([image])[0]["mask"]
    same = {"pixels_differing": (got != expected).float().mean().item(),
            "classes": len(expected.unique())}
    print(f"segmentation outputs: {same}", flush=True)
    times = time_interleaved({"pytorch": lambda: model([image]),
                              "onnx": lambda: onnx_model([image]),
                              "onnx_basic": lambda: basic([image])}, repeats)
    return {"outputs": same, "seconds": report("DeepLabV3-R50", times)}


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip", nargs="*", default=[], choices=("detection", "segmentation"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        if "detection" not in args.skip:
            result["detection"] = bench_detection(Path(tmp) / "det", args.repeats, args.threads)
        if "segmentation" not in args.skip:
            result["segmentation"] = bench_segmentation(Path(tmp) / "seg", args.repeats,
                                                        args.threads)
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
