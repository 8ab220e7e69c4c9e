"""The four studies end to end: get the models, measure, write PNG + CSV + JSON.

Each `run_*` returns the paths it wrote: {"png", "csv", "json"} under `ctx.output_dir`,
named after the study (degradation.png, degradation.csv, degradation.json, ...).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from resnet_detect.engine.amp import float32_default
from resnet_detect.engine.config import ConfigError

from .config import StudyContext
from .lesion import (is_downsampling, random_lesions, single_block_lesions,
                     warn_of_max_k_past_the_blocks)
from .models import StudyModel, load_study_model, train_study_model
from .paths import effective_paths, path_gradient_magnitudes, path_length_distribution
from .plots import plot_degradation, plot_lesion, plot_paths, plot_responses
from .responses import block_names, layer_response_std, response_layers
from .training import accuracy

logger = logging.getLogger(__name__)


def _write(ctx: StudyContext, study: str, header: Sequence[str], rows: Sequence[Sequence[Any]],
           payload: dict[str, Any], plot: Callable[[Path, str], None], title: str,
           started: float) -> dict[str, Path]:
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: ctx.output_dir / f"{study}.{ext}" for ext in ("png", "csv", "json")}
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    payload = {"study": study, "title": title, "data": ctx.describe_data(),
               "seconds": round(time.perf_counter() - started, 1), **payload,
               "config": ctx.config}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
    plot(paths["png"], title)
    return paths


def _models(ctx: StudyContext, weights: Sequence[str], *, twins: bool) -> list[StudyModel]:
    """The checkpoints given, or (without) the residual net at ctx.depth and its plain twin."""
    if weights:
        models = [load_study_model(w, ctx) for w in weights]
        # two runs' model_final.pth: told apart by their folders in the plots and tables (by
        # their paths as given where the folders share a name too)
        for name in (lambda w: f"{Path(w).parent.name}/{Path(w).name}", str):
            labels = [m.label for m in models]
            models = [dataclasses.replace(m, label=f"{m.arch} ({name(w)})")
                      if labels.count(m.label) > 1 else m for m, w in zip(models, weights)]
        return models
    models = [train_study_model(ctx, ctx.depth, residual=True)]
    if twins:
        models.append(train_study_model(ctx, ctx.depth, residual=False))
    return models


def _names(models: Sequence[StudyModel]) -> str:
    return " vs ".join(m.label for m in models)


def run_degradation(ctx: StudyContext, weights: Sequence[str], *,
                    depths: Sequence[int]) -> dict[str, Path]:
    """Train plain and residual twins at each depth with one recipe; plot their errors."""
    if weights:
        raise ConfigError("degradation trains its own plain/residual twins; --weights is not "
                          "used (run responses or lesion on the models it saves)")
    if not depths:
        raise ConfigError("degradation.depths is empty")
    started = time.perf_counter()
    runs = []
    for depth in depths:
        for residual in (False, True):
            model = train_study_model(ctx, depth, residual=residual)
            assert model.history is not None
            runs.append({"arch": model.arch, "depth": depth, "residual": residual,
                         "source": model.source, "history": model.history.as_dict()})
    rows = [(r["arch"], r["depth"], r["residual"], it, f"{tr:.3f}", f"{va:.3f}")
            for r in runs for it, tr, va in zip(r["history"]["iterations"],
                                                r["history"]["train_error"],
                                                r["history"]["val_error"])]
    sampling = ctx.path_sampling
    trained_with = ("" if sampling["mode"] == "none" else
                    f" (residual: drop_path {sampling['rate']:g} {sampling['schedule']})"
                    if sampling["mode"] == "drop_path" else
                    f" (residual: {sampling['k']} of n branches)")
    title = (f"Degradation: plain (dashed) vs residual (solid) {ctx.family} depths "
             f"{', '.join(map(str, depths))}, {ctx.recipe.iterations} iterations"
             f"{trained_with}\non {ctx.describe_data()}")
    return _write(ctx, "degradation",
                  ("arch", "depth", "residual", "iteration", "train_error", "val_error"), rows,
                  {"runs": runs}, lambda path, t: plot_degradation(runs, path, t), title, started)


def run_responses(ctx: StudyContext, weights: Sequence[str], *, max_images: int,
                  layers: str = "3x3") -> dict[str, Path]:
    """Std of every 3x3 layer's output after its norm (or of every block's residual branch
    output: layers="blocks"), per model, in network order."""
    started = time.perf_counter()
    models = _models(ctx, weights, twins=True)
    images = ctx.val.subset(max_images, seed=0)
    results = []
    for m in models:
        measured = response_layers(m.backbone, layers)
        std = layer_response_std(m.model, measured, m.inputs(images),
                                 batch_size=ctx.eval_batch_size)
        results.append({**m.describe(), "layers": layers, "std": std,
                        "layer_names": [layer.name for layer in measured],
                        "downsampling": [layer.downsampling for layer in measured]})
    rows = [(r["label"], i + 1, name, down, f"{s:.6f}") for r in results
            for i, (name, down, s) in enumerate(zip(r["layer_names"], r["downsampling"],
                                                    r["std"]))]
    what = "3x3 layers" if layers == "3x3" else "residual branches"
    title = (f"Responses of the {what} of {_names(models)}\n"
             f"on {len(images)} validation images of {ctx.describe_data()}")
    return _write(ctx, "responses", ("model", "layer", "layer_name", "downsampling", "std"), rows,
                  {"models": results}, lambda path, t: plot_responses(results, path, t), title,
                  started)


def run_lesion(ctx: StudyContext, weights: Sequence[str], *, draws: int,
               max_k: int) -> dict[str, Path]:
    """Accuracy with single blocks deleted, and with k random blocks deleted."""
    if draws < 1:
        raise ConfigError(f"lesion.draws must be >= 1, got {draws}")
    started = time.perf_counter()
    models = _models(ctx, weights, twins=True)
    results, rows = [], []
    for m in models:
        if weights:  # (nets the config trains: said before training)
            warn_of_max_k_past_the_blocks(max_k, len(m.backbone.blocks()), m.label)
        images, labels = m.inputs(ctx.val), ctx.val.labels
        generator = torch.Generator().manual_seed(ctx.recipe.seed)
        baseline = accuracy(m.model, images, labels, batch_size=ctx.eval_batch_size)
        single = single_block_lesions(m.model, m.backbone, images, labels,
                                      batch_size=ctx.eval_batch_size)
        random = random_lesions(m.model, m.backbone, images, labels, draws=draws, max_k=max_k,
                                generator=generator, batch_size=ctx.eval_batch_size)
        names = block_names(m.backbone)
        down = [is_downsampling(b) for b in m.backbone.blocks()]
        results.append({**m.describe(), "baseline": baseline, "single": single,
                        "block_names": names, "downsampling": down,
                        "random": {k: [acc for _, acc in v] for k, v in random.items()},
                        "random_deleted": {k: [list(s) for s, _ in v]
                                           for k, v in random.items()}})
        rows.append((m.label, "none", 0, "", "", f"{baseline:.3f}"))
        rows += [(m.label, "single", 1, i + 1, names[i], f"{acc:.3f}")
                 for i, acc in enumerate(single)]
        rows += [(m.label, "random", k, " ".join(str(i + 1) for i in subset),
                  " ".join(names[i] for i in subset), f"{acc:.3f}")
                 for k, v in random.items() for subset, acc in v]
        logger.info("%s: intact %.2f%%, one block deleted %.2f..%.2f%%", m.label, baseline,
                    min(single), max(single))
    title = (f"Lesion: {_names(models)} (residual solid, plain dashed)\n"
             f"on {ctx.describe_data()}")
    chance = 100.0 / len(ctx.train.class_names)
    return _write(ctx, "lesion", ("model", "deletion", "k", "deleted_blocks",
                                  "deleted_block_names", "accuracy"), rows,
                  {"models": results, "chance": chance},
                  lambda path, t: plot_lesion(results, path, t, chance), title, started)


def run_paths(ctx: StudyContext, weights: Sequence[str], *, samples_per_k: int, batches: int,
              batch_size: int) -> dict[str, Path]:
    """Path-length distribution, gradient magnitude per path length, effective paths."""
    if samples_per_k < 1 or batches < 1 or batch_size < 1:
        raise ConfigError("paths.samples_per_k, paths.batches and paths.batch_size must be >= 1")
    started = time.perf_counter()
    models = _models(ctx, weights, twins=False)
    order = torch.randperm(len(ctx.train), generator=torch.Generator().manual_seed(
        ctx.recipe.seed))[:batches * batch_size]
    results, rows = [], []
    for m in models:
        if not m.residual:
            raise ConfigError(f"paths needs a residual net; {m.label} is plain")
        images, labels = m.inputs(ctx.train), ctx.train.labels
        chunks = [(images[idx], labels[idx]) for idx in order.split(batch_size)]
        generator = torch.Generator().manual_seed(ctx.recipe.seed)
        samples = path_gradient_magnitudes(m.model, chunks, samples_per_k=samples_per_k,
                                           generator=generator)
        n = len(samples) - 1
        distribution = path_length_distribution(n)
        magnitude = [sum(v) / len(v) for v in samples]
        spread = [torch.tensor(v, dtype=torch.float64).std(unbiased=False).item()
                  for v in samples]
        effective = effective_paths(distribution, magnitude)
        mean_length = sum(k * e for k, e in enumerate(effective))
        results.append({**m.describe(), "distribution": distribution, "magnitude": magnitude,
                        "magnitude_std": spread, "samples": [len(v) for v in samples],
                        "effective": effective, "effective_mean_length": mean_length,
                        "effective_mode": max(range(n + 1), key=lambda k: effective[k])})
        rows += [(m.label, k, n, distribution[k], f"{magnitude[k]:.6g}", f"{spread[k]:.6g}",
                  len(samples[k]), f"{effective[k]:.6g}") for k in range(n + 1)]
        logger.info("%s: %d blocks, paths average length %.1f, the gradient's %.1f", m.label, n,
                    n / 2, mean_length)
    used = len(order)  # paths.batches x paths.batch_size, or all the training images
    title = (f"Effective paths of {_names(models)}\n"
             f"on {used} training images ({-(-used // batch_size)} batches) of "
             f"{ctx.describe_data()}")
    return _write(ctx, "paths", ("model", "k", "blocks", "probability", "grad_magnitude",
                                 "grad_magnitude_std", "samples", "effective_share"), rows,
                  {"models": results}, lambda path, t: plot_paths(results, path, t), title,
                  started)


STUDIES = ("degradation", "responses", "lesion", "paths")


@float32_default()  # whatever torch's default dtype: float32 weights
def run_study(study: str, ctx: StudyContext, cfg: Any, weights: Sequence[str]) -> dict[str, Path]:
    """Dispatch to the study's runner with its section of the config as plain values."""
    if study == "degradation":
        return run_degradation(ctx, weights, depths=list(cfg.degradation.depths))
    if study == "responses":
        return run_responses(ctx, weights, max_images=cfg.responses.max_images,
                             layers=cfg.responses.layers)
    if study == "lesion":
        return run_lesion(ctx, weights, draws=cfg.lesion.draws, max_k=cfg.lesion.max_k)
    if study == "paths":
        p = cfg.paths
        return run_paths(ctx, weights, samples_per_k=p.samples_per_k, batches=p.batches,
                         batch_size=p.batch_size)
    raise ConfigError(f"unknown study {study!r}; valid: {', '.join(STUDIES)}")
