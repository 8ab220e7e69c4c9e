"""ONNX export and ONNX Runtime sessions, shared by every task (tools/export.py).

An export folder holds `model.onnx` (one uint8 RGB image (H, W, 3) in, any H and W; the
task's post-processing inside the graph) and `export.json` (what the graph expects and what
its labels mean). Graphs are traced with the TorchScript-based exporter (`dynamo=False`):
it exports these models in a second or two, keeps sizes that come from the input symbolic as
long as the model never turns them into Python ints, and writes torchvision's NMS and
RoIAlign as the ONNX operators.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import Tensor, nn

from .files import atomic_write_json

OPSET = 17
MODEL_FILE = "model.onnx"
METADATA_FILE = "export.json"
METADATA_KEY = "export_json"  # the same JSON in the graph's metadata_props
COMMON_KEYS = ("pixel_mean", "pixel_std", "class_names")  # in every export.json
INSTALL_HINT = "pip install 'resnet-detect[export]' (or: pip install onnx onnxruntime)"


class ExportError(ValueError):
    """An export folder or `.onnx` file that cannot be used as asked."""


def is_onnx(weights: str | os.PathLike | None) -> bool:
    """True for an `.onnx` file (any case) or an export folder (tools' `--weights`)."""
    if weights is None:
        return False
    path = Path(weights)
    return path.suffix.lower() == ".onnx" or (path.is_dir() and any(
        (path / name).exists() for name in (MODEL_FILE, METADATA_FILE)))


def export_graph(graph: nn.Module, example: Sequence[torch.Tensor], path: Path, *,
                 input_names: Sequence[str], output_names: Sequence[str],
                 dynamic_axes: Mapping[str, Sequence[int]]) -> None:
    """Trace `graph` on `example` inputs into the ONNX file `path` (opset `OPSET`)."""
    import torchvision.ops._register_onnx_ops  # noqa: F401  (NMS, RoIAlign as ONNX operators)

    graph.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with warnings.catch_warnings(), torch.no_grad():
        # tracer warnings about Python values are expected: the graph wrappers keep every
        # input-dependent size a tensor, and the tests run the graphs at other sizes
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, tuple(example), str(partial), dynamo=False, opset_version=OPSET,
                          input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes={k: list(v) for k, v in dynamic_axes.items()})
    os.replace(partial, path)


def write_metadata(folder: Path, task: str, *, inputs: Mapping[str, Any],
                   outputs: Mapping[str, str], pixel_mean: Sequence[float],
                   pixel_std: Sequence[float], class_names: Sequence[str],
                   **extra: Any) -> dict[str, Any]:
    """Write `folder/export.json`, and the same JSON into the graph's metadata (key
    `METADATA_KEY`: a service that ships `model.onnx` alone, or reads it through ONNX
    Runtime's C, C++, C#, Java or JS API, keeps the class names and the resize rule); returns
    it."""
    import onnx
    metadata = {
        "task": task, "model": MODEL_FILE, "opset": OPSET,
        "inputs": dict(inputs), "outputs": dict(outputs),
        "channel_order": "RGB", "pixel_mean": list(pixel_mean), "pixel_std": list(pixel_std),
        "class_names": list(class_names), **extra,
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "onnx": onnx.__version__},
    }
    graph_file = folder / metadata["model"]
    graph = onnx.load(str(graph_file))
    del graph.metadata_props[:]
    graph.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata))
    partial = graph_file.with_name(graph_file.name + ".partial")
    onnx.save(graph, str(partial))
    os.replace(partial, graph_file)
    atomic_write_json(metadata, folder / METADATA_FILE)
    return metadata


def model_path(weights: str | os.PathLike) -> Path:
    """The `.onnx` file that `weights` (the file or its export folder) names."""
    path = Path(weights)
    return path / MODEL_FILE if path.is_dir() else path


def _metadata_inside(onnx_file: Path) -> dict[str, Any] | None:
    """The export.json that `write_metadata` put in the graph's metadata (None: none)."""
    import onnx
    try:
        graph = onnx.load(str(onnx_file), load_external_data=False)
    except Exception as e:  # a damaged or foreign file: its message, as the file's
        raise ValueError(f"not a readable ONNX file ({type(e).__name__}: {e})") from e
    for prop in graph.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    return None


def read_metadata(weights: str | os.PathLike, task: str, required: Sequence[str] = ()
                  ) -> dict[str, Any]:
    """`export.json` beside the `.onnx` that `weights` names (else the copy inside the graph:
    a `model.onnx` shipped alone), checked to be for `task` and to hold every export's keys
    and `required`.

    Raises:
        ExportError: no model file, no or unreadable export.json, another task, a key missing.
    """
    onnx_file = model_path(weights)
    if not onnx_file.is_file():
        raise ExportError(f"{onnx_file}: no such ONNX file")
    meta_file: Path | str = onnx_file.with_name(METADATA_FILE)
    try:
        if Path(meta_file).is_file():
            metadata = json.loads(Path(meta_file).read_text())
        else:
            meta_file = f"{onnx_file}'s metadata"
            metadata = _metadata_inside(onnx_file)
    except (OSError, ValueError) as e:
        raise ExportError(f"{meta_file} is unreadable: {e}") from e
    if metadata is None:
        raise ExportError(f"{onnx_file} has no {METADATA_FILE} beside it (nor inside it, as "
                          f"exports since 2026-12-02 have): without it the labels' meaning is "
                          f"unknown; export again with tools/export.py")
    if not isinstance(metadata, dict) or metadata.get("task") != task:
        found = metadata.get("task") if isinstance(metadata, dict) else None
        raise ExportError(f"{meta_file} is for task {found!r}; this config's task is {task!r}")
    missing = [key for key in (*COMMON_KEYS, *required) if key not in metadata]
    if missing:
        raise ExportError(f"{meta_file} lacks {missing}; export again with tools/export.py")
    if not isinstance(metadata["class_names"], list) or not all(
            isinstance(n, str) for n in metadata["class_names"]):
        raise ExportError(f"{meta_file}: class_names must be a list of names, got "
                          f"{metadata['class_names']!r:.80}")
    return metadata


def open_session(weights: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """ONNX Runtime session on the `.onnx` that `weights` names: the CUDA execution provider
    for a CUDA device when present, the CPU one otherwise."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ExportError(f"running {weights} needs onnxruntime: {INSTALL_HINT}") from e
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda" and \
            "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return onnxruntime.InferenceSession(str(model_path(weights)), providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types
        raise ExportError(f"ONNX Runtime cannot load {model_path(weights)}: {e}") from e


class OnnxModel(nn.Module):
    """An exported graph of `task` run by ONNX Runtime, standing in for the PyTorch model where
    the tools call it (subclasses: `detection.export.OnnxDetector`,
    `segmentation.export.OnnxSegmentor`).

    Attributes:
        metadata: export.json.
        session: the ONNX Runtime session.
    """

    def __init__(self, weights: str | os.PathLike, task: str,
                 device: str | torch.device = "cpu", required: Sequence[str] = ()) -> None:
        super().__init__()
        self.metadata = read_metadata(weights, task, required)
        self.session = open_session(weights, device)
        # where the tensors handed back live (evaluation reads the model's device from here)
        self.register_buffer("pixel_mean", torch.tensor(self.metadata["pixel_mean"])
                             .view(3, 1, 1), False)
        self.to(device)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def hwc_uint8(self, image: Tensor) -> np.ndarray:
        """A (3, H, W) uint8 image as the graph's (H, W, 3) input."""
        if image.dtype != torch.uint8:
            raise ExportError(f"an exported {self.metadata['task']} model takes uint8 images, "
                              f"got {image.dtype}")
        return np.ascontiguousarray(image.cpu().permute(1, 2, 0).numpy())


def check_class_names(metadata: Mapping[str, Any], names: Sequence[str], source: str,
                      weights: str | os.PathLike) -> None:
    """Refuse an export whose classes are not `names` (of the data in `source`)."""
    exported = list(metadata.get("class_names") or [])
    if exported != list(names):
        raise ExportError(f"{model_path(weights).with_name(METADATA_FILE)} names the classes "
                          f"{exported[:10]}, {source} has {list(names)[:10]}: the labels would "
                          f"mean other classes")
