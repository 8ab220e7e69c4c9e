"""Draw a split's images as the model receives them, to check a dataset and its config before
training (detectron2's tools/visualize_data.py, mmdetection's browse_dataset.py).

Usage:
  python tools/browse_dataset.py CONFIG --output DIR [--split train|val] [--num N]
      [--seed S] [key=value ...]   (e.g. data.train.ann_file=A.json data.train.img_dir=IMG)

Detection configs: each object's box and class name (and Mask R-CNN's masks) on the image,
"train" with the training augmentation (scale, flip) and the images the training keeps,
"val" at the test size. Segmentation configs (`task: sem_seg`): the class-id map with a
legend beside the image, ignored pixels grey ("train": the augmented crops, padding
included; "val": whole images). Pretraining configs (`task: classification`): each crop
(enlarged by a whole factor under 192 px) above its class name ("train": random resized
crops, "val": centre crops; the classes in turn). Pictures go to DIR under the images' names
inside data.<split>.img_dir or root/<split> (.jpg unless PNG). The first N images of the
split (default 20; 0 = all) are drawn; --seed picks the augmentation. An image that cannot
be read or whose annotation cannot be used is named and skipped, the others drawn, and the
run then fails listing them.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run as a file: the repository's package (not an installed one)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet_detect.engine import setup_logging  # noqa: E402
from resnet_detect.engine.cli import config_argument_parser, run_tool  # noqa: E402
from resnet_detect.engine.config import ConfigError  # noqa: E402
from resnet_detect.engine.data import DatasetError, UnreadableImageError, listing  # noqa: E402
from resnet_detect.engine.files import writable_folder  # noqa: E402
from resnet_detect.engine.tasks import load_task_config, task_module  # noqa: E402
from resnet_detect.engine.visualize import output_paths, write_picture  # noqa: E402

logger = logging.getLogger("browse")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = config_argument_parser(__doc__)
    parser.add_argument("--output", required=True, help="folder for the pictures")
    parser.add_argument("--split", default="train", choices=("train", "val"),
                        help="the config's data split to draw (default train)")
    parser.add_argument("--num", type=int, default=20,
                        help="images drawn, the split's first (default 20; 0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="augmentation seed (default 0)")
    return parser.parse_intermixed_args(argv)


def sample_seed(seed: int, index: int) -> int:
    """The augmentation seed of image `index`: the same picture for the same --seed."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0] >> 1)


def split_folders(cfg: Any, split: str) -> dict[str, str]:
    """{the key that names it: folder} of the split's images (first) and masks: data.<split>'s
    img_dir and mask_dir, or a classification config's data.root/<data.<split>_split>."""
    data = cfg.data
    if f"{split}_split" in data:  # an ImageFolder tree
        return {f"data.root/data.{split}_split": f"{data.root}/{data[f'{split}_split']}"}
    split_cfg = data.get(split) or {}
    return {f"data.{split}.{key}": split_cfg[key] for key in ("img_dir", "mask_dir")
            if split_cfg.get(key)}


def refuse_output_in_the_data(output: str, cfg: Any) -> None:
    """Pictures written into a split's image or mask folder become part of the dataset (a
    segmentation eval then found images without masks, a classification split a class):
    both splits', whichever is drawn."""
    out = Path(output).resolve()
    for key, folder in {**split_folders(cfg, "train"), **split_folders(cfg, "val")}.items():
        if out.is_relative_to(Path(folder).resolve()):
            raise ConfigError(f"--output {output} is inside {key} {folder}: the "
                              f"pictures would join the dataset; give a folder outside it")


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Draw the split's first images; returns the written files."""
    args = parse_args(argv)
    if args.num < 0:
        raise ConfigError(f"--num must be >= 0 (0 = all images), got {args.num}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    setup_logging(None)
    task, cfg = load_task_config(args.config, args.overrides)
    browse_split = getattr(task_module(task), "browse_split", None)
    if browse_split is None:
        raise ConfigError(f"tools/browse_dataset.py draws detection, sem_seg and "
                          f"classification data; {args.config} is a {task!r} config")
    refuse_output_in_the_data(args.output, cfg)
    output = writable_folder(args.output, "--output")  # before the data is read
    dataset, draw = browse_split(cfg, args.split)
    count = len(dataset) if args.num == 0 else min(args.num, len(dataset))
    img_dir = Path(next(iter(split_folders(cfg, args.split).values())))
    files = [Path(dataset.record(i)["file_name"]) for i in range(count)]
    names = [f.relative_to(img_dir) if f.is_relative_to(img_dir) else Path(f.name)
             for f in files]
    written, refused = [], []
    for index, out in enumerate(output_paths(list(zip(files, names)), output)):
        key = (index, sample_seed(args.seed, index))
        if hasattr(dataset, "batch_keys"):  # a training scale per batch (scale_per_batch)
            key = dataset.batch_keys([key])[0]
        try:
            sample = dataset[key]
        except (DatasetError, UnreadableImageError) as err:  # the others are still drawn
            sample = None
            logger.warning("%s", err)
        if sample is None:
            refused.append(str(files[index]))
            continue
        written.append(write_picture(draw(sample), out))
    print(f"wrote {len(written)} picture(s) of {len(dataset)} {args.split} image(s) to {output}",
          flush=True)
    if refused:
        raise DatasetError(f"{len(refused)} of {count} images could not be drawn (the others "
                           f"were):" + listing(refused))
    return written


if __name__ == "__main__":
    run_tool(main)
