"""Export trained weights to ONNX, for ONNX Runtime or any ONNX runtime.

Usage:
  python tools/export.py CONFIG --weights CKPT --output DIR [key=value ...]
      [--quantize int8 [--calibration-images N]]

Writes DIR/model.onnx and DIR/export.json. The graph takes one uint8 RGB image (H, W, 3) and
does the rest: normalisation, padding, and the task's post-processing. Detectors and
classifiers take it already resized by the test-time rule that export.json names;
segmenters take it as it is, at any size (they apply test_scale and test.max_size themselves
and give the class map at the input's size). Outputs:
  classifiers (tools/pretrain.py): "logits" (K,);
  Faster / Mask R-CNN take a second input, "original_size" ([h, w]: the image's size before
    resizing), and give "boxes" (D, 4) xyxy in its pixels, "scores" (D,), "labels" (D,)
    dataset category ids, and for Mask R-CNN "masks" (D, h, w) bool; with --mask-output box,
    "mask_probs" (D, M, M) float32 instead, each box's mask to paste into its box (less
    memory on large images: the pasted masks take D x h x w floats at once);
  segmentation: "mask" (H, W) class ids.
--quantize int8: DIR/model.onnx is the graph quantized to int8 for CPUs (ONNX Runtime's static
quantization, QDQ, per-channel weights; the network only, post-processing float32),
calibrated on N images of the config's validation split (default 32); export.json's
"quantization" says how (resnet_detect/engine/quantize.py). Faster R-CNN, classifiers and
segmenters; not Mask R-CNN.
tools/eval.py (and tools/demo.py for detectors and segmenters) take DIR (or DIR/model.onnx)
as --weights and run it with ONNX Runtime. export.json records the checkpoint exported
(`exported_from`: its path and SHA-256). Needs `pip install 'resnet-detect[export]'`.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: the repository's package (not an installed one)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet_detect.engine import setup_logging  # noqa: E402
from resnet_detect.engine.cli import config_argument_parser, run_tool  # noqa: E402
from resnet_detect.engine.export import (FLOAT32_PREFIX, INSTALL_HINT,  # noqa: E402
                                         METADATA_FILE, ExportError, is_onnx,
                                         remove_interrupted_export)
from resnet_detect.engine.files import writable_folder  # noqa: E402
from resnet_detect.engine.quantize import (DEFAULT_CALIBRATION_IMAGES,  # noqa: E402
                                           QUANTIZE_CHOICES)
from resnet_detect.engine.run_lock import exclusive_tool_folder  # noqa: E402
from resnet_detect.engine.tasks import TASK_MODULES, config_task, task_module  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = config_argument_parser(__doc__)
    parser.add_argument("--weights", required=True, help="checkpoint to export")
    parser.add_argument("--output", required=True, help="folder for model.onnx and export.json")
    parser.add_argument("--mask-output", choices=("pasted", "box"), default=None,
                        help="Mask R-CNN: masks pasted at original_size (default) or each "
                             "box's M x M mask probabilities")
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=None,
                        help="int8: quantize the graph for CPUs (static, QDQ, per-channel "
                             "weights), calibrated on the config's validation images")
    parser.add_argument("--calibration-images", type=int, default=None, metavar="N",
                        help=f"--quantize: how many validation images calibrate it "
                             f"(default {DEFAULT_CALIBRATION_IMAGES})")
    return parser.parse_intermixed_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Export; returns what export.json holds."""
    args = parse_args(argv)
    setup_logging(None)
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ExportError(f"tools/export.py needs onnx: {INSTALL_HINT}") from None
    if is_onnx(args.weights):
        raise ExportError(f"--weights {args.weights} is an export already; tools/export.py "
                          "exports the .pth checkpoint it came from")
    task = config_task(args.config, args.overrides)
    export_model = getattr(task_module(task), "export_model", None) \
        if task in TASK_MODULES else None
    if export_model is None:
        raise ExportError(f"tools/export.py exports classification, detection and sem_seg "
                         f"models; {args.config} is a {task!r} config")
    options = {}
    if args.mask_output is not None:
        if task != "detection":
            raise ExportError(f"--mask-output is for Mask R-CNN; {args.config} is a {task!r} "
                             f"config")
        options["mask_output"] = args.mask_output
    if args.calibration_images is not None and args.quantize is None:
        raise ExportError("--calibration-images is for --quantize int8")
    calibration = None
    if args.quantize is not None:  # refused, and its images read, before anything is exported
        from resnet_detect.engine.quantize import prepare_calibration
        calibration = prepare_calibration(
            task, args.config, args.overrides, DEFAULT_CALIBRATION_IMAGES
            if args.calibration_images is None else args.calibration_images)
    output = writable_folder(args.output, "--output")
    with exclusive_tool_folder(output, "tools/export.py") as locked:
        if locked:  # (unlocked, they may be another export's, still writing)
            remove_interrupted_export(output)
        replaced = earlier_export(output)
        if calibration is None:
            metadata = export_model(args.config, args.weights, output, args.overrides,
                                    **options)
        else:
            from resnet_detect.engine.quantize import quantize_export
            # the float32 export apart, so that the folder's earlier export stays whole until
            # the int8 graph replaces it
            with tempfile.TemporaryDirectory(dir=output, prefix=FLOAT32_PREFIX) as fp32:
                fp32_metadata = export_model(args.config, args.weights, Path(fp32),
                                             args.overrides, **options)
                metadata = quantize_export(Path(fp32), output, fp32_metadata, *calibration)
    print(f"wrote {Path(args.output) / metadata['model']}"
          f"{' (int8)' if calibration is not None else ''} and export.json"
          f"{f' in place of the export that was there{replaced}' if replaced is not None else ''}: "
          f"{json.dumps(metadata['outputs'])}", flush=True)
    return metadata


def earlier_export(folder: Path) -> str | None:
    """What the export a new one replaces in `folder` was (" (a sem_seg export, of WEIGHTS)",
    "" where its export.json says nothing of it); None where there is none."""
    try:
        earlier = json.loads((folder / METADATA_FILE).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return ""
    if not isinstance(earlier, dict):
        return ""
    source = earlier.get("exported_from")
    weights = source.get("weights") if isinstance(source, dict) else None
    task = earlier.get("task")
    return (f" (a {task} export{f', of {weights}' if weights else ''})"
            if isinstance(task, str) else "")


if __name__ == "__main__":
    run_tool(main)
