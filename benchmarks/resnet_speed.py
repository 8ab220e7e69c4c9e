"""ResNet-50 forward and training-step images/s: ours against torchvision's, in one run.

Usage: python benchmarks/resnet_speed.py [--batch 16] [--size 224] [--repeats 5] [--threads N]
The two models are timed alternately, repeat after repeat, so load on a shared machine hits
both alike; the reported ratio is of medians (ours / torchvision, > 1 means faster).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torchvision  # noqa: E402

from resnet_detect import backbones  # noqa: E402
from timing import time_interleaved  # noqa: E402


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               optimizer: torch.optim.Optimizer) -> None:
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    reference = torchvision.models.resnet50()
    ours = backbones.build_classifier("resnet50", 1000)
    backbones.load_weights(ours, reference.state_dict())
    models = {"ours": ours, "torchvision": reference}
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 1000, (args.batch,))
    results = {}
    for phase in ("forward", "train_step"):
        for model in models.values():
            model.train(phase == "train_step")
        if phase == "forward":
            runs = {n: (lambda m=m: m(x)) for n, m in models.items()}
        else:
            optimizers = {n: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
                          for n, m in models.items()}
            runs = {n: (lambda m=m, o=optimizers[n]: train_step(m, x, y, o))
                    for n, m in models.items()}
        times = time_interleaved(runs, args.repeats, inference=phase == "forward")
        rates = {n: args.batch / statistics.median(t) for n, t in times.items()}
        results[phase] = {"images_per_s": rates, "ratio": rates["ours"] / rates["torchvision"]}
        print(f"{phase:<11} ours {rates['ours']:7.2f} img/s   torchvision "
              f"{rates['torchvision']:7.2f} img/s   ratio {results[phase]['ratio']:.3f}")
    results["setup"] = {"batch": args.batch, "size": args.size, "repeats": args.repeats,
                        "threads": torch.get_num_threads(), "torch": torch.__version__,
                        "machine": platform.processor() or platform.machine()}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
