"""DeepLabV3-R50 CPU inference at output stride 16 and 8: ours against torchvision's, in one run.

Usage: python benchmarks/segmentation_inference.py [--size 512] [--batch 1] [--repeats 5]
           [--threads N] [--num-classes 21]

Models (random weights, eval mode, 0..255 input normalised inside ours, pre-normalised for
torchvision's):
  torchvision  deeplabv3_resnet50 (output stride 8, ASPP 12/24/36, aux head not run)
  ours_os8_tv  ours with torchvision's settings and its weights imported (same logits)
  ours_os8     configs/segmentation/deeplabv3_R_50_os8.yaml  (multi-grid 1/2/4)
  ours_os16    configs/segmentation/deeplabv3_R_50_os16.yaml (multi-grid 1/2/4, ASPP 6/12/18)
All are timed alternately, repeat after repeat, so load on a shared machine hits them alike.
Ratios are of median images/s against torchvision (> 1 means faster).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torchvision.models.segmentation import deeplabv3_resnet50  # noqa: E402

from resnet_detect.segmentation import build_model, load_config, load_segmentation_weights  # noqa: E402
from timing import time_interleaved  # noqa: E402


def predict_fn(model: torch.nn.Module, images: list[torch.Tensor]) -> Callable[[], object]:
    """Ours end to end: normalise, network, upsample, argmax."""
    return lambda: [out["mask"] for out in model(images)]


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--num-classes", type=int, default=21)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    classes = f"model.num_classes={args.num_classes}"
    reference = deeplabv3_resnet50(weights=None, weights_backbone=None,
                                   num_classes=args.num_classes, aux_loss=False).eval()
    configs = ROOT / "configs" / "segmentation"
    models = {
        "ours_os8_tv": build_model(load_config(configs / "deeplabv3_R_50_os8.yaml", [
            classes, "model.backbone.multi_grid=null", "model.aux_head.enabled=false"])),
        "ours_os8": build_model(load_config(configs / "deeplabv3_R_50_os8.yaml", [classes])),
        "ours_os16": build_model(load_config(configs / "deeplabv3_R_50_os16.yaml", [classes])),
    }
    load_segmentation_weights(models["ours_os8_tv"], reference.state_dict())
    images = [torch.randint(0, 256, (3, args.size, args.size), dtype=torch.uint8)
              for _ in range(args.batch)]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    normalized = (torch.stack(images).float() / 255.0 - mean) / std
    runs: dict[str, Callable[[], object]] = {"torchvision": lambda: reference(normalized)["out"]}
    for name, model in models.items():
        runs[name] = predict_fn(model.eval(), images)
    with torch.no_grad():  # ours with torchvision's weights must give its logits
        expected = reference(normalized)["out"]
        got = torch.stack([out["sem_seg"] for out in models["ours_os8_tv"].eval()(images)])
    agreement = {"max_abs_logit_diff": (got - expected).abs().max().item(),
                 "max_abs_logit": expected.abs().max().item(),
                 "pixels_with_other_class": int((got.argmax(1) != expected.argmax(1)).sum())}
    print(f"ours_os8_tv vs torchvision: {agreement}")
    times = time_interleaved(runs, args.repeats)
    rates = {n: args.batch / statistics.median(t) for n, t in times.items()}
    results = {name: {"images_per_s": rate, "ms_per_image": 1000.0 / rate,
                      "ratio_vs_torchvision": rate / rates["torchvision"]}
               for name, rate in rates.items()}
    for name, r in results.items():
        print(f"{name:<12} {r['images_per_s']:7.3f} img/s  {r['ms_per_image']:9.1f} ms/img  "
              f"ratio {r['ratio_vs_torchvision']:.3f}")
    results["ours_os8_tv_vs_torchvision"] = agreement
    results["setup"] = {"size": args.size, "batch": args.batch, "repeats": args.repeats,
                        "threads": torch.get_num_threads(), "torch": torch.__version__,
                        "machine": platform.processor() or platform.machine()}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
