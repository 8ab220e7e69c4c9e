"""Print the parameters and GMACs (multiply-adds) of a model, per part.

Usage:
  python tools/model_info.py BACKBONE [--size H [W]] [--num-classes K] [key=value ...]
  python tools/model_info.py CONFIG.yaml [--size H [W]] [--num-classes K] [key=value ...]

A backbone name (resnet50, ...) counts its classifier per stage; options after it are
backbone options, e.g. stride_in_1x1=true output_stride=16 (and custom_imports=[MODULE] for
one registered by a module of your own, docs/extending.md). A config of tools/train.py or
tools/pretrain.py counts that model (random weights: none is read); options after it are
config overrides. The input defaults to 224x224 (32x32 for CIFAR nets), a detection config's
largest test image (data.val.min_size x data.val.max_size), a segmentation config's training
crop or a pretraining config's data.image_size. A detector's RoI heads are counted on as many
RoIs as it keeps at most (model.rpn.post_nms_topk_test proposals, detections_per_image masks).

Classes: --num-classes, else the config's model.num_classes, else as training counts them:
a segmenter's data.class_names, the categories of data.train.ann_file where it is a readable
COCO file (sem_seg: and the background), a classifier's class folders in data.root's train
split; else a default (COCO's 80, VOC's 21, ImageNet's 1000), with a note where
data.class_names or data.train.ann_file is set but cannot be read.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if not __package__:  # run as a file: the repository's package (not an installed one)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from resnet_detect import backbones  # noqa: E402
from resnet_detect.backbones.complexity import count_macs, count_parameters  # noqa: E402
from resnet_detect.engine.cli import program_name, run_tool  # noqa: E402
from resnet_detect.engine.config import ConfigError  # noqa: E402
from resnet_detect.engine.custom_imports import KEY as CUSTOM_IMPORTS  # noqa: E402
from resnet_detect.engine.custom_imports import import_custom_modules  # noqa: E402
from resnet_detect.detection.complexity import padded  # noqa: E402

# a config's model.num_classes left to the data: counted with the benchmark's
DEFAULT_CLASSES = {"detection": 80, "sem_seg": 21, "classification": 1000}
CONFIG_SUFFIXES = (".yaml", ".yml")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=program_name(), description=__doc__, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help=f"a config file, or one of: "
                                     f"{', '.join(backbones.list_models())}")
    parser.add_argument("--size", "--shape", type=int, nargs=2, default=None,
                        metavar=("H", "W"), help="input size, one number for a square "
                                                 "(default: see above; --shape: mmdetection's "
                                                 "get_flops.py spelling)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes (default: the config's model.num_classes, else its "
                             "data's classes, else 80, 21 or 1000; 10 for CIFAR nets)")
    parser.add_argument("options", nargs="*",
                        help="backbone options, or a config's overrides, as key=value")
    args = parser.parse_intermixed_args(squares_given_as_one_number(
        sys.argv[1:] if argv is None else argv))
    bare = [o for o in args.options if "=" not in o]
    if bare:  # from_dotlist makes `output_stride` a None, which means the default
        parser.error(f"options must be key=value, got {', '.join(bare)}")
    if args.size and min(args.size) < 1:
        parser.error(f"--size must be two positive numbers of pixels, got {args.size}")
    if args.num_classes is not None and args.num_classes < 1:
        parser.error(f"--num-classes must be a positive number of classes, got "
                     f"{args.num_classes}")
    if Path(args.name).is_dir():
        parser.error(f"{args.name} is a folder: give a config file (a run's config.yaml) or a "
                     f"backbone name")
    if args.name.endswith(CONFIG_SUFFIXES) or Path(args.name).is_file():
        config_info(args)
    else:
        backbone_info(args, parser)


def squares_given_as_one_number(argv: list[str]) -> list[str]:
    """`--size 224` (mmdetection's get_flops.py `--shape 224`: a square) as `--size 224 224`
    (two numbers are taken: a greedy one-or-two would eat the key=value after it)."""
    words = [part for word in argv for part in (
        word.split("=", 1) if word.startswith(("--size=", "--shape=")) else [word])]
    for i in range(len(words) - 1):
        after = words[i + 2] if i + 2 < len(words) else ""
        if words[i] in ("--size", "--shape") and words[i + 1].isdigit() and not after.isdigit():
            return [*words[:i + 2], words[i + 1], *words[i + 2:]]
    return words


def backbone_info(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    options = OmegaConf.to_container(OmegaConf.from_dotlist(args.options))
    # a backbone of one's own: the module that registers it, as a config names it
    import_custom_modules(options.pop(CUSTOM_IMPORTS, None), "the command line")
    cifar = "cifar" in args.name
    try:
        model = backbones.build_classifier(args.name, args.num_classes or (10 if cifar else 1000),
                                           **options)
    except ValueError as e:  # an unknown name or option, or a value it refuses
        parser.error(str(e))
    size = tuple(args.size or ((32, 32) if cifar else (224, 224)))
    print(f"{args.name} {options or ''} input {size[0]}x{size[1]}, {model.fc.out_features} "
          f"classes")
    print_rows(classifier_rows(model, size), count_parameters(model))


def config_info(args: argparse.Namespace) -> None:
    from resnet_detect.engine.tasks import (BUILT_IN_TASKS, config_task, load_task_config,
                                            task_module)
    overrides = list(args.options)
    task = config_task(args.name, overrides)
    task_module(task)  # (a study's config, or no task: said there)
    if task not in BUILT_IN_TASKS:  # (a task of one's own: its model is its own)
        raise ConfigError(f"tools/model_info.py counts {', '.join(sorted(BUILT_IN_TASKS))} "
                          f"models; {args.name} is a {task!r} config")
    try:
        task, cfg = load_task_config(args.name, overrides)
    except ConfigError:
        if task != "classification" or any(o.startswith("data.root=") for o in overrides):
            raise
        # data.root is mandatory, and only its class folders are looked at here
        task, cfg = load_task_config(args.name, [*overrides, "data.root=unused"])
    num_classes = args.num_classes or cfg.model.get("num_classes")
    said = ""
    if num_classes is None:  # the data's, at training
        num_classes, said = classes_of_data(task, cfg)
    if num_classes is None:
        num_classes = 10 if "cifar" in str(cfg.model.get("name")) else DEFAULT_CLASSES[task]
        said = " (the data's at training: --num-classes K for yours)"
    cfg.model.weights = None  # shapes are all that is counted: no file is read
    if task == "classification":
        with torch.device("meta"):  # shapes only: no weights allocated
            model = backbones.build_classifier(cfg.model.name, num_classes,
                                               **OmegaConf.to_container(cfg.model.options))
        size = tuple(args.size or default_size(task, cfg))
        rows = classifier_rows(model, size)
        batch = size
    else:
        cfg.model.num_classes = num_classes
        cfg.model.backbone.weights = None
        if task == "detection":
            from resnet_detect.detection.build import build_model
            from resnet_detect.detection.complexity import count_detector as count
        else:
            from resnet_detect.segmentation.build import build_model
            from resnet_detect.segmentation.complexity import count_segmenter as count
        size = tuple(args.size or default_size(task, cfg))
        with torch.device("meta"):
            model = build_model(cfg)
        rows = count(model, size)
        batch = padded(size, model.size_divisibility)
    print(f"{args.name}: {task}, {num_classes} classes{said}, input {size[0]}x{size[1]}"
          + (f" (padded to {batch[0]}x{batch[1]})" if batch != size else ""))
    print_rows(rows, count_parameters(model))


def classes_of_data(task: str, cfg) -> tuple[int | None, str]:
    """(the classes the config's data gives, as training counts them, what to say of them): a
    classifier's class folders, a segmenter's data.class_names, else the categories of
    data.train.ann_file (sem_seg: and the background); (None, "") where the config names
    none or they cannot be read (said)."""
    if task == "classification":
        return classes_of_image_folder(cfg)
    if task == "sem_seg" and OmegaConf.select(cfg, "data.class_names") is not None:
        from resnet_detect.segmentation.data import resolve_class_names
        try:
            return (len(resolve_class_names(cfg)),
                    f" (data.class_names {OmegaConf.select(cfg, 'data.class_names')})")
        except (OSError, ValueError) as err:  # (DatasetError: ValueError)
            print(f"note: data.class_names: {err}; counting the default classes")
            return None, ""
    ann_file = OmegaConf.select(cfg, "data.train.ann_file")
    if task not in ("detection", "sem_seg") or not ann_file:
        return None, ""
    try:
        ids = {int(c["id"]) for c in json.loads(Path(ann_file).read_bytes())["categories"]}
        if not ids:
            raise ValueError("no categories")
    except FileNotFoundError:
        reason = "not found"
    except (OSError, ValueError, KeyError, TypeError) as err:  # (JSONDecodeError: ValueError)
        reason = f"not a COCO file with categories ({type(err).__name__}: {err})"
    else:
        background = " and the background" if task == "sem_seg" else ""
        return (len(ids) + (task == "sem_seg"),
                f" (the categories of data.train.ann_file {ann_file}{background})")
    print(f"note: data.train.ann_file {ann_file}: {reason}; counting the default classes")
    return None, ""


def classes_of_image_folder(cfg) -> tuple[int | None, str]:
    """(the class folders of a classifier's data.root/<train split>, what to say of them);
    (None, "") where there is no such folder."""
    from resnet_detect.backbones.data import class_folders
    split = Path(str(cfg.data.root)) / str(cfg.data.get("train_split") or "train")
    if not split.is_dir():
        if str(cfg.data.root) != "unused":  # (the stand-in of a config without data.root)
            print(f"note: data.root's {split} is not a folder; counting the default classes")
        return None, ""
    found = class_folders(split)
    return (len(found), f" (the class folders of {split})") if found else (None, "")


def default_size(task: str, cfg) -> tuple[int, int]:
    """The input a config's model is counted at: a detector's largest test image, a
    segmenter's training crop, a classifier's crop."""
    if task == "classification":
        return cfg.data.image_size, cfg.data.image_size
    if task == "detection":
        from resnet_detect.detection.config import test_resize
        short, cap = test_resize(cfg)
        if cap is None:
            raise ConfigError("data.val.max_size is null (no cap): test images have no "
                              "largest size to count at: pass --size H W")
        return min(short, cap), cap  # the resize scales the short side to `short` or less
    crop = cfg.data.train.crop_size
    if crop is None:
        raise ConfigError("data.train.crop_size is null (whole images): no input size to "
                          "count at: pass --size H W")
    return tuple(crop)


def classifier_rows(model, size: tuple[int, int]) -> list[tuple[str, int, int]]:
    macs = count_macs(model, size)
    parts = dict(model.backbone.named_children()) | {"fc": model.fc}
    return [(name, count_parameters(module), macs.get(name, 0))
            for name, module in parts.items()]


def print_rows(rows: list[tuple[str, int, int]], parameters: int) -> None:
    """The parts, then the total: every parameter, and the multiply-adds of inference."""
    from resnet_detect.segmentation.complexity import AUX_ROW
    width = max(8, max(len(name) for name, _, _ in rows) + 2)
    print(f"{'part':<{width}}{'params':>14} {'GMACs':>10}")
    for name, params, macs in rows:
        print(f"{name:<{width}}{params:>14,} {macs / 1e9:>10.3f}")
    inference = sum(macs for name, _, macs in rows if name != AUX_ROW)
    print(f"{'total':<{width}}{parameters:>14,} {inference / 1e9:>10.3f}")


if __name__ == "__main__":
    run_tool(main)
