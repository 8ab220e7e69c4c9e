"""Matplotlib figures of the studies (Agg backend: no display needed). Each writes one PNG."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from resnet_detect.engine.files import atomic_write_figure  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _save(fig: Any, path: str | os.PathLike) -> None:
    fig.tight_layout()
    atomic_write_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_degradation(runs: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                     title: str) -> None:
    """Training (left) and validation (right) error vs iterations; plain dashed, residual solid.

    Args:
        runs: {"arch", "depth", "residual", "history": {"iterations", "train_error",
            "val_error"}} per model.
        path: the PNG.
        title: names the models and data.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    depths = sorted({run["depth"] for run in runs})
    for run in runs:
        color = COLORS[depths.index(run["depth"]) % len(COLORS)]
        style = "-" if run["residual"] else "--"
        history = run["history"]
        label = f"{'ResNet' if run['residual'] else 'plain'}-{run['depth']} ({run['arch']})"
        for ax, key in zip(axes, ("train_error", "val_error")):
            ax.plot(history["iterations"], history[key], style, color=color, label=label,
                    linewidth=1.8 if run["residual"] else 1.4)
    for ax, name in zip(axes, ("training error", "validation error")):
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"{name} (%)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_responses(models: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                   title: str) -> None:
    """Std of each measured layer's output: network order (left) and sorted (right).

    Args:
        models: {"label", "residual", "layers": "3x3" or "blocks", "std": [per layer]} per
            model.
        path: the PNG.
        title: names the models and data.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for i, model in enumerate(models):
        color = COLORS[i % len(COLORS)]
        style = "-" if model["residual"] else "--"
        index = range(1, len(model["std"]) + 1)
        axes[0].plot(index, model["std"], style, marker="o", markersize=3, color=color,
                     label=model["label"])
        axes[1].plot(index, sorted(model["std"], reverse=True), style, marker="o",
                     markersize=3, color=color, label=model["label"])
    unit = "block" if models and models[0]["layers"] == "blocks" else "3x3 layer"
    axes[0].set_xlabel(f"{unit} (network order)")
    axes[1].set_xlabel(f"{unit} (sorted by magnitude)")
    axes[0].set_ylabel("std of residual branch output" if unit == "block"
                       else "std of the layer's output after its norm")
    axes[0].set_title("layer responses, network order")
    axes[1].set_title("layer responses, sorted")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_lesion(models: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                title: str, chance: float) -> None:
    """Accuracy with one block deleted (left, downsampling blocks marked) and with k random
    blocks deleted (right, mean and min..max over draws).

    Args:
        models: {"label", "residual", "baseline", "single": [acc per block],
            "downsampling": [bool per block], "random": {k: [acc per draw]}} per model.
        path: the PNG.
        title: names the models and data.
        chance: accuracy (%) of guessing, drawn as a grey line.
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    marked = False
    for i, model in enumerate(models):
        color = COLORS[i % len(COLORS)]
        style = "-" if model["residual"] else "--"
        blocks = list(range(1, len(model["single"]) + 1))
        axes[0].plot(blocks, model["single"], style, marker="o", markersize=4, color=color,
                     label=f"{model['label']}, one block deleted")
        axes[0].axhline(model["baseline"], color=color, linestyle=":", linewidth=1,
                        label=f"{model['label']}, intact ({model['baseline']:.1f}%)")
        down = [b for b, d in zip(blocks, model["downsampling"]) if d]
        axes[0].plot(down, [model["single"][b - 1] for b in down], "x", color="black",
                     markersize=9, label=None if marked else "downsampling block")
        marked = marked or bool(down)
        ks = sorted(model["random"])
        means = [sum(model["random"][k]) / len(model["random"][k]) for k in ks]
        axes[1].plot(ks, means, style, marker="o", markersize=4, color=color,
                     label=model["label"])
        axes[1].fill_between(ks, [min(model["random"][k]) for k in ks],
                             [max(model["random"][k]) for k in ks], color=color, alpha=0.15)
    axes[0].set_xlabel("deleted block (network order)")
    axes[0].set_title("deleting one block")
    axes[1].set_xlabel("number of blocks deleted at random (k)")
    axes[1].set_title("deleting k random blocks (mean, min..max)")
    for ax in axes:
        ax.axhline(chance, color="grey", linewidth=1, label=f"chance ({chance:.1f}%)")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_ylim(0, None)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_paths(models: Sequence[Mapping[str, Any]], path: str | os.PathLike,
               title: str) -> None:
    """Path-length distribution, gradient magnitude per path length (log scale), and their
    normalized product (the effective paths), one line per model.

    Args:
        models: {"label", "distribution", "magnitude", "effective"} per model (lists over
            k = 0..n).
        path: the PNG.
        title: names the models and data.
    """
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for i, model in enumerate(models):
        color = COLORS[i % len(COLORS)]
        lengths = list(range(len(model["distribution"])))
        axes[0].bar(lengths, model["distribution"], color=color, alpha=0.6,
                    label=model["label"])
        axes[1].semilogy(lengths, model["magnitude"], "-o", markersize=3, color=color,
                         label=model["label"])
        axes[2].plot(lengths, model["effective"], "-o", markersize=3, color=color,
                     label=f"{model['label']}: gradient (mean length "
                           f"{model['effective_mean_length']:.1f})")
        axes[2].plot(lengths, model["distribution"], ":", color=color,
                     label=f"{model['label']}: paths (mean length {(len(lengths) - 1) / 2:.1f})")
    axes[0].set_title("path length distribution")
    axes[0].set_ylabel("fraction of paths")
    axes[1].set_title("gradient magnitude along paths of length k")
    axes[1].set_ylabel("gradient magnitude at the first block's input")
    axes[2].set_title("effective paths: distribution x magnitude")
    axes[2].set_ylabel("share of gradient magnitude / of paths")
    for ax in axes:
        ax.set_xlabel("path length k (residual branches crossed)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
