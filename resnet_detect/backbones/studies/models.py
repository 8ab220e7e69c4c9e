"""The models a study compares: trained here (and saved with provenance) or read from a
checkpoint, each with the normalization its weights expect.

Shapes: uint8 (N, 3, S, S) images -> normalized float (N, 3, S, S) -> logits (N, K).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import torch

from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.files import checksum_file
from resnet_detect.engine.preemption import TrainingInterrupted

from .. import build_classifier
from ..classifier import Classifier
from ..resnet import ResNet
from ..weights import (
    load_weights,
    make_provenance,
    read_checkpoint,
    save_checkpoint,
    unwrap_state_dict,
)
from .config import StudyContext
from .data import ClassificationSplit, normalize
from .path_sampling import apply_path_sampling
from .training import TrainHistory, train_classifier

logger = logging.getLogger(__name__)


@dataclass
class StudyModel:
    """A classifier under study.

    Attributes:
        label: how plots and tables name it.
        arch: registry name.
        model: the classifier (evaluation mode).
        pixel_mean, pixel_std: its input normalization (0..255 values).
        source: "trained here" or the checkpoint path.
        history: its error curves when trained here.
    """

    label: str
    arch: str
    model: Classifier
    pixel_mean: list[float]
    pixel_std: list[float]
    source: str
    history: TrainHistory | None = None

    @property
    def backbone(self) -> ResNet:
        return self.model.backbone

    @property
    def residual(self) -> bool:
        return all(block.residual for block in self.backbone.blocks())

    def inputs(self, split: ClassificationSplit) -> torch.Tensor:
        """The split's images normalized for this model."""
        return normalize(split.images, self.pixel_mean, self.pixel_std)

    def describe(self) -> dict[str, object]:
        return {"label": self.label, "arch": self.arch, "source": self.source,
                "blocks": len(self.backbone.blocks()), "residual": self.residual}


def training_record(ctx: StudyContext, arch: str, residual: bool) -> dict[str, Any]:
    """Everything that decides the net trained here: a saved net with the same record is
    the one this run would train."""
    recipe = dataclasses.asdict(ctx.recipe)
    del recipe["log_period"]  # how often it prints, not what it trains
    record = {"arch": arch, "options": ctx.options,
              "path_sampling": ctx.path_sampling if residual else None, "recipe": recipe,
              "pixel_mean": ctx.pixel_mean, "pixel_std": ctx.pixel_std,
              "data": ctx.describe_data(), "data_sha256": _fingerprint(ctx.train, ctx.val)}
    return json.loads(json.dumps(record))  # tuples as lists, as after a round trip


def _fingerprint(*splits: ClassificationSplit) -> str:
    """SHA-256 of the splits' pixels and labels as trained on (files rewritten under the same
    data.root, or the same files under another path, are told apart by content)."""
    digest = hashlib.sha256()
    for split in splits:
        digest.update(split.images.contiguous().numpy().tobytes())
        digest.update(split.labels.to(torch.int64).numpy().tobytes())
    return digest.hexdigest()


def saved_name(arch: str, record: dict[str, Any]) -> str:
    """ARCH-<8 hex digits of the training record>: one file per recipe, options and data, so
    that a study with another recipe into the same folder keeps the nets it did not train."""
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return f"{arch}-{digest[:8]}"


def _reuse(path: Path, record: dict[str, Any], model: Classifier) -> TrainHistory | None:
    """Load the net saved at `path` into `model` and return its curves, when it was trained
    with `record`; None (train it) otherwise."""
    if not path.is_file():
        return None
    try:
        checkpoint = read_checkpoint(path)
        if checkpoint.get("study_training") != record:  # edited by hand, or a collision
            logger.warning("%s was trained with another recipe, options or data: training it "
                           "again (the file is replaced)", path)
            return None
        model.load_state_dict(checkpoint["model"])
        return TrainHistory(**checkpoint["history"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        logger.warning("%s cannot be reused (%s): training it again", path, e)
        return None


def _adopt_unhashed(old: Path, path: Path, record: dict[str, Any]) -> None:
    """A net saved as models/ARCH.pth (before the names carried the record) and trained with
    `record` is renamed to `path`, with its checksum, and so reused; another is left as it
    is."""
    if path.exists() or not old.is_file():
        return
    try:
        trained_with = read_checkpoint(old).get("study_training")
    except (ValueError, OSError):
        return
    if trained_with == record:
        if checksum_file(old).is_file():
            os.replace(checksum_file(old), checksum_file(path))
        os.replace(old, path)
        logger.info("%s renamed %s (the name of the recipe it was trained with)", old, path.name)


def train_study_model(ctx: StudyContext, depth: int, *, residual: bool) -> StudyModel:
    """Train `ctx.arch(depth, residual)` with the context's recipe and save it to
    OUTPUT_DIR/models/ARCH-<record>.pth (`saved_name`; with provenance, reusable as
    --weights), or reuse the net saved there by an earlier run with the same recipe, options
    and data (a stopped study run again trains only what it lacks).

    The path sampling option applies to residual nets only.
    """
    arch = ctx.arch(depth, residual)
    torch.manual_seed(ctx.recipe.seed)
    model = build_classifier(arch, len(ctx.train.class_names), config_prefix="model.options.",
                             **ctx.options)
    record = training_record(ctx, arch, residual)
    name = saved_name(arch, record)
    path = ctx.output_dir / "models" / f"{name}.pth"
    _adopt_unhashed(ctx.output_dir / "models" / f"{arch}.pth", path, record)
    history = _reuse(path, record, model)
    if history is not None:
        logger.info("%s: reusing %s, trained by an earlier run with the same recipe, options "
                    "and data (delete it to train again)", arch, path)
        return StudyModel(label=arch, arch=arch, model=model.to(ctx.device).eval(),
                          pixel_mean=ctx.pixel_mean, pixel_std=ctx.pixel_std,
                          source=f"trained by an earlier run, saved in {path}", history=history)
    sampler = apply_path_sampling(model.backbone, **ctx.path_sampling) if residual else None
    provenance = make_provenance(arch, ctx.options, class_names=ctx.train.class_names,
                                 config=ctx.config, pixel_mean=tuple(ctx.pixel_mean),
                                 pixel_std=tuple(ctx.pixel_std))
    logger.info("training %s for %d iterations", arch, ctx.recipe.iterations)
    history, late_stop = train_classifier(model, ctx.train, ctx.val, recipe=ctx.recipe,
                               pixel_mean=ctx.pixel_mean, pixel_std=ctx.pixel_std,
                               device=ctx.device, output_dir=ctx.output_dir / "runs" / name,
                               name=arch, eval_batch_size=ctx.eval_batch_size,
                               provenance=provenance)
    if sampler is not None:
        sampler.remove()
    save_checkpoint(path, model.state_dict(), provenance, iteration=ctx.recipe.iterations,
                    history=history.as_dict(), study_training=record)
    if late_stop:  # (the stop came after the net's last step: saved whole, the study stops)
        raise TrainingInterrupted(f"{late_stop} came as {arch} finished; saved to {path}",
                                  signal_name=late_stop, iteration=ctx.recipe.iterations,
                                  exit_code=128 + signal.Signals[late_stop].value)
    return StudyModel(label=arch, arch=arch, model=model.eval(), pixel_mean=ctx.pixel_mean,
                      pixel_std=ctx.pixel_std, source=f"trained here, saved to {path}",
                      history=history)


def _check_image_size(path: str | os.PathLike, config: Any, size: int) -> None:
    """A net analysed at another image size than it was trained at gives numbers of another
    network (a study's net trained at 16 px scored near chance at 48, pretraining's at 32
    scored chance at 16): refused. Pretraining's size is its training crop."""
    if not isinstance(config, dict) or not isinstance(config.get("data"), dict):
        return
    trained = config["data"].get("image_size")
    if not isinstance(trained, int) or trained == size:
        return
    images = "images" if config.get("task") == "analyze" else "crops (pretraining's)"
    raise ConfigError(f"weights file {path} was trained on {trained}x{trained} px {images}, "
                      f"this run's are {size}x{size} (data.image_size): set "
                      f"data.image_size={trained}")


def load_study_model(path: str | os.PathLike, ctx: StudyContext) -> StudyModel:
    """A classifier from a checkpoint: this project's (architecture, options, normalization
    and classes from its provenance) or a bare state dict of `ctx.arch(ctx.depth, True)`.

    Raises:
        ConfigError: the checkpoint has no classifier head, or its classes differ from the data's.
    """
    checkpoint = read_checkpoint(path)
    state_dict, provenance = unwrap_state_dict(checkpoint)
    fc = state_dict.get("fc.weight")
    if fc is None:
        raise ConfigError(f"weights file {path} has no classifier (fc.weight); the studies need "
                          f"a classifier checkpoint such as pretraining's model_final.pth")
    class_names = ctx.train.class_names
    if provenance:
        arch, options = provenance["arch"], dict(provenance.get("options", {}))
        mean, std = list(provenance["pixel_mean"]), list(provenance["pixel_std"])
        trained_on = list(provenance.get("class_names") or [])
        if trained_on and trained_on != class_names:
            raise ConfigError(f"weights file {path} was trained on classes {trained_on}, but "
                              f"data.root has {class_names}")
        _check_image_size(path, provenance.get("study_config", provenance.get("config")),
                          ctx.train.images.shape[-1])
    else:
        arch, options = ctx.arch(ctx.depth, True), dict(ctx.options)
        mean, std = ctx.pixel_mean, ctx.pixel_std
        # a plain net's weights load into its residual twin too (option-A shortcuts have none)
        plain = arch.startswith("plain_")
        logger.warning("weights file %s records no architecture: analyzed as %s (model.family "
                       "and model.depth)%s", path, arch, "" if plain else
                       f"; a plain net's weights load into a residual one too: for one, set "
                       f"model.family=plain_{ctx.family}")
    if fc.shape[0] != len(class_names):
        raise ConfigError(f"weights file {path} predicts {fc.shape[0]} classes, the data has "
                          f"{len(class_names)}")
    model = build_classifier(arch, len(class_names), config_prefix="model.options.", **options)
    load_weights(model, checkpoint, config_prefix="model.options.")
    model.to(ctx.device).eval()
    return StudyModel(label=f"{arch} ({Path(path).name})", arch=arch, model=model,
                      pixel_mean=mean, pixel_std=std, source=str(path))
