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
import logging
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .files import atomic_write_json, is_disk_full, sha256_of

logger = logging.getLogger(__name__)
OPSET = 17
MODEL_FILE = "model.onnx"
METADATA_FILE = "export.json"
METADATA_KEY = "export_json"  # the same JSON in the graph's metadata_props
COMMON_KEYS = ("pixel_mean", "pixel_std", "class_names")  # in every export.json
INSTALL_HINT = "pip install 'resnet-detect[export]' (or: pip install onnx onnxruntime)"
# work folders an export makes in its folder: an int8 export's float32 graph, the quantizer's
FLOAT32_PREFIX, QUANTIZE_PREFIX = ".float32-", ".quantize-"


class ExportError(ValueError):
    """An export folder or `.onnx` file that cannot be used as asked."""


def is_onnx(weights: str | os.PathLike | None) -> bool:
    """True for an `.onnx` file (any case) or an export folder (tools' `--weights`)."""
    if weights is None:
        return False
    path = Path(weights)
    return path.suffix.lower() == ".onnx" or (path.is_dir() and (any(
        (path / name).exists() for name in (MODEL_FILE, METADATA_FILE))
        or bool(interrupted_export_files(path))))


def exported_from(weights: str | os.PathLike) -> dict[str, str]:
    """export.json's record of the checkpoint a graph was made from (the folder's graph is
    the earlier export's after a stopped one: this tells which weights an evaluation scored)."""
    return {"weights": str(Path(weights).resolve()), "sha256": sha256_of(weights)}


def export_source(model: Any) -> dict[str, Any]:
    """What an evaluation's metrics.json records of an exported `model`'s checkpoint:
    {"exported_from": ...} as its export.json has it; {} for a PyTorch model (or an export
    made before it was recorded)."""
    metadata = getattr(model, "metadata", None)
    return ({"exported_from": metadata["exported_from"]}
            if isinstance(metadata, dict) and "exported_from" in metadata else {})


def export_graph(graph: nn.Module, example: Sequence[torch.Tensor], path: Path, *,
                 input_names: Sequence[str], output_names: Sequence[str],
                 dynamic_axes: Mapping[str, Sequence[int] | Mapping[int, str]]) -> None:
    """Trace `graph` on `example` inputs into `path` + ".partial" (opset `OPSET`);
    `write_metadata` completes it and puts it in place, so that an earlier export in the
    folder stays whole until then. `dynamic_axes`: each input's and output's free axes, or
    {axis: name} (one name for one size in several: "detections")."""
    import torchvision.ops._register_onnx_ops  # noqa: F401  (NMS, RoIAlign as ONNX operators)

    graph.eval()
    partial = _partial(path)
    with _written(partial), warnings.catch_warnings(), torch.no_grad():
        path.parent.mkdir(parents=True, exist_ok=True)
        # tracer warnings about Python values are expected: the graph wrappers keep every
        # input-dependent size a tensor, and the tests run the graphs at other sizes
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, tuple(example), str(partial), dynamo=False, opset_version=OPSET,
                          input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes={k: dict(v) if isinstance(v, Mapping) else list(v)
                                        for k, v in dynamic_axes.items()})


def _as_written(values: Sequence[float]) -> list[float]:
    """A model's float32 mean or std as the config wrote it: 123.675, not 123.67500305175781
    (the shortest decimal that is the same float32)."""
    return [float(np.format_float_positional(np.float32(v))) for v in values]


def write_metadata(folder: Path, task: str, *, inputs: Mapping[str, Any],
                   outputs: Mapping[str, str], pixel_mean: Sequence[float],
                   pixel_std: Sequence[float], class_names: Sequence[str],
                   num_classes: int, fixed_dims: Mapping[str, Mapping[int, int]] | None = None,
                   **extra: Any) -> dict[str, Any]:
    """Put the graph `export_graph` traced in place as `folder/model.onnx` with this JSON in
    its metadata (key `METADATA_KEY`: a service that ships `model.onnx` alone, or reads it
    through ONNX Runtime's C, C++, C#, Java or JS API, keeps the class names and the resize
    rule), and write it as `folder/export.json`; returns it. `fixed_dims`: {output: {axis:
    size}} that the exporter's shape inference left as names (a box's 4 coordinates)."""
    import onnx
    import torchvision
    metadata = {
        "task": task, "model": MODEL_FILE, "opset": OPSET,
        "inputs": dict(inputs), "outputs": dict(outputs),
        "channel_order": "RGB", "pixel_mean": _as_written(pixel_mean),
        "pixel_std": _as_written(pixel_std), "class_names": list(class_names),
        "num_classes": num_classes, **extra,
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "onnx": onnx.__version__},
    }
    graph_file = folder / metadata["model"]
    partial = _partial(graph_file)
    with _written(partial):
        if len(class_names) != num_classes:
            raise ExportError(f"{len(class_names)} class names for a model of {num_classes} "
                              f"classes: the labels would be misnamed")
        graph = onnx.load(str(partial))
        partial.unlink()  # (in memory: the disk holds one copy at a time)
        del graph.metadata_props[:]
        graph.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata))
        for output in graph.graph.output:
            for axis, size in (fixed_dims or {}).get(output.name, {}).items():
                output.type.tensor_type.shape.dim[axis].dim_value = size  # (clears the name)
        onnx.save(graph, str(partial))
        os.replace(partial, graph_file)
        try:
            atomic_write_json(metadata, folder / METADATA_FILE)
        except OSError:  # an earlier export's must not describe this graph (its own is inside)
            (folder / METADATA_FILE).unlink(missing_ok=True)
            raise
    return metadata


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def interrupted_export_files(folder: Path) -> list[Path]:
    """What an export stopped partway (or writing now) leaves in `folder`: its graph's
    .partial, an int8 export's work folders."""
    return [p for p in folder.iterdir()
            if p.name == _partial(folder / MODEL_FILE).name
            or (p.is_dir() and p.name.startswith((FLOAT32_PREFIX, QUANTIZE_PREFIX)))]


def remove_interrupted_export(folder: Path) -> None:
    """Remove what a killed export left in `folder`: its graph's .partial and an int8
    export's work folders (a float32 graph, the quantizer's copy: 120 MB for an R50-FPN),
    which no later export removed and which went with every copy of the folder (the export
    itself stays whole through a kill). Only under the folder's lock (exclusive_tool_folder):
    another export's are not left over."""
    left = interrupted_export_files(folder)
    for p in left:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    if left:
        logger.info("removed what an interrupted export left in %s: %s", folder,
                    ", ".join(sorted(p.name for p in left)))


@contextmanager
def _written(partial: Path) -> Iterator[None]:
    """A write that fails (a full disk, a read-only model.onnx) leaves no `partial` behind and
    is an ExportError of one line; the folder's earlier export stays as it was where the
    failure comes before the new graph is in place (all but writing export.json after it)."""
    try:
        yield
    except OSError as e:
        partial.unlink(missing_ok=True)
        free = "free space or " if is_disk_full(e) else ""
        raise ExportError(f"cannot write the export in {partial.parent} ({type(e).__name__}: "
                          f"{e.strerror or e}): {free}choose another --output") from e
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def model_path(weights: str | os.PathLike) -> Path:
    """The `.onnx` file that `weights` (the file or its export folder) names."""
    path = Path(weights)
    return path / MODEL_FILE if path.is_dir() else path


def _read_json(path: Path) -> Any:
    """The JSON in `path`, or None where it cannot be read."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def read_metadata(weights: str | os.PathLike, task: str, required: Sequence[str],
                  session: Any) -> tuple[dict[str, Any], str]:
    """(the export's metadata, where it was read) for the `.onnx` that `weights` names and its
    ONNX Runtime `session`: the copy inside the graph (written with it), else the
    `export.json` beside it (exports before 2026-12-02); checked to be for `task` and to hold
    every export's keys and `required`. An `export.json` that differs from the graph's own
    copy (another export's, in a shared folder) is named in a warning and not used.

    Raises:
        ExportError: no metadata, unreadable metadata, another task, a key missing.
    """
    onnx_file = model_path(weights)
    meta_file = onnx_file.with_name(METADATA_FILE)
    inside = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    source = f"{onnx_file}'s own metadata" if inside is not None else str(meta_file)
    try:
        metadata = (json.loads(inside) if inside is not None
                    else json.loads(meta_file.read_bytes()) if meta_file.is_file() else None)
    except (OSError, ValueError) as e:
        raise ExportError(f"{source} is unreadable: {e}") from e
    if metadata is None:
        raise ExportError(f"{onnx_file} has no {METADATA_FILE} beside it, nor a copy inside it: "
                          f"without it the labels' meaning is unknown; export again with "
                          f"tools/export.py")
    if inside is not None and meta_file.is_file() and _read_json(meta_file) != metadata:
        logger.warning("%s is not the export of %s (it differs from the copy inside the "
                       "graph, which is used): another export's, or edited", meta_file,
                       onnx_file)
    if not isinstance(metadata, dict) or metadata.get("task") != task:
        found = metadata.get("task") if isinstance(metadata, dict) else None
        runs = {"detection": "a detection config: tools/eval.py, tools/demo.py, "
                             "resnet_detect.detection.Predictor",
                "sem_seg": "a sem_seg config: tools/eval.py, tools/demo.py, "
                           "resnet_detect.segmentation.Predictor",
                "classification": "a pretraining config: tools/eval.py"}.get(found)
        raise ExportError(f"{source} is for task {found!r}; this config's task is {task!r}"
                          + (f" (it runs with {runs})" if runs else ""))
    missing = [key for key in (*COMMON_KEYS, *required) if key not in metadata]
    if missing:
        raise ExportError(f"{source} lacks {missing}; export again with tools/export.py")
    if not isinstance(metadata["class_names"], list) or not all(
            isinstance(n, str) for n in metadata["class_names"]):
        raise ExportError(f"{source}: class_names must be a list of names, got "
                          f"{metadata['class_names']!r:.80}")
    return metadata, source


def open_session(weights: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """ONNX Runtime session on the `.onnx` that `weights` names: the CUDA execution provider
    for a CUDA device when present, the CPU one otherwise."""
    if not model_path(weights).is_file():
        folder = model_path(weights).parent
        stopped = (f" (an export into {folder} stopped before it ended: export again with "
                   f"tools/export.py)"
                   if folder.is_dir() and interrupted_export_files(folder) else "")
        raise ExportError(f"{model_path(weights)}: no such ONNX file{stopped}")
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
        raise ExportError(f"ONNX Runtime cannot load {model_path(weights)}: {e} (a damaged or "
                          f"cut file: export it again with tools/export.py; an ONNX Runtime "
                          f"older than the graph: pip install -U onnxruntime)") from e


class OnnxModel(nn.Module):
    """An exported graph of `task` run by ONNX Runtime, standing in for the PyTorch model where
    the tools call it (subclasses: `detection.export.OnnxDetector`,
    `segmentation.export.OnnxSegmentor`).

    Attributes:
        metadata: export.json (the copy inside the graph, see `read_metadata`).
        metadata_source: where it was read, for messages.
        session: the ONNX Runtime session.
    """

    def __init__(self, weights: str | os.PathLike, task: str,
                 device: str | torch.device = "cpu", required: Sequence[str] = ()) -> None:
        super().__init__()
        self.session = open_session(weights, device)
        self.metadata, self.metadata_source = read_metadata(weights, task, required,
                                                            self.session)
        left = interrupted_export_files(model_path(weights).parent)
        if left:
            recorded = self.metadata.get("exported_from")
            source = recorded.get("weights") if isinstance(recorded, dict) else None
            logger.warning("an export into %s stopped before it ended, or is writing now (%s "
                           "there): %s is the earlier export's%s", model_path(weights).parent,
                           ", ".join(sorted(p.name for p in left)), model_path(weights),
                           f", of {source}" if source else "")
        # where the tensors handed back live (evaluation reads the model's device from here)
        self.register_buffer("pixel_mean", torch.tensor(self.metadata["pixel_mean"])
                             .view(3, 1, 1), False)
        self.to(device)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def run_graph(self, inputs: Mapping[str, np.ndarray], memory_hint: str = "") -> list[Any]:
        """The graph's outputs for `inputs` (its "image" an (H, W, 3) array; a detector's
        "original_size" the photo's (H, W) when the image was resized for it).

        Raises:
            MemoryError: ONNX Runtime could not allocate a buffer (a large photo), naming the
                photo's size and `memory_hint`.
        """
        try:
            return self.session.run(None, dict(inputs))
        except Exception as e:  # onnxruntime raises its own exception types
            if "allocate" not in str(e):
                raise
            height, width = inputs.get("original_size", inputs["image"].shape)[:2]
            raise MemoryError(f"ONNX Runtime ran out of memory on a {width}x{height} image "
                              f"({str(e).strip()[-120:]}){memory_hint}") from e

    def hwc_uint8(self, image: Tensor) -> np.ndarray:
        """A (3, H, W) uint8 image as the graph's (H, W, 3) input."""
        if image.dtype != torch.uint8:
            raise ExportError(f"an exported {self.metadata['task']} model takes uint8 images, "
                              f"got {image.dtype}")
        return np.ascontiguousarray(image.cpu().permute(1, 2, 0).numpy())


def warn_of_settings_the_graph_keeps(weights: str | os.PathLike, differing: Sequence[str],
                                     overrides: Sequence[str], fixed: Sequence[str] = (),
                                     recorded: Mapping[str, Any] | None = None) -> None:
    """One warning naming what a config asks for that an exported graph runs otherwise:
    `differing` ("key graph's (config: asked)"), and the `model.*` overrides that the graph
    cannot take (its own; `fixed`: those compared in `differing`; the weights keys, replaced
    by the graph's weights as by a checkpoint's, go unnamed), but for those asking for what
    the graph runs: the value of its `recorded` model config (export.json's "model_config";
    graphs exported before it was recorded: every such override named)."""
    ignored = [key for key, item in ((o.split("=", 1)[0], o) for o in overrides)
               if key.startswith("model.") and key not in fixed
               and key not in ("model.weights", "model.backbone.weights")
               and not _as_recorded(item, recorded)]
    if differing or ignored:
        logger.warning("the exported graph %s runs as it was exported, not as the config says: "
                       "%s; export again with the settings wanted", weights, "; ".join(
                           [*differing, *([f"{', '.join(ignored)} not applied"] if ignored
                                          else [])]))


def _as_recorded(item: str, recorded: Mapping[str, Any] | None) -> bool:
    """Whether the override `item` ("model.head.name=fcn") asks for the value `recorded` (a
    model config) holds."""
    from omegaconf import OmegaConf
    key = item.split("=", 1)[0]
    node: Any = recorded
    for part in key.split(".")[1:]:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    try:
        asked = OmegaConf.select(OmegaConf.from_dotlist([item]), key)
    except Exception:  # (the config loader names a malformed override)
        return False
    asked = OmegaConf.to_container(asked) if OmegaConf.is_config(asked) else asked
    return bool(asked == node)


def check_class_names(model: OnnxModel, names: Sequence[str], source: str) -> None:
    """Refuse an export whose classes are not `names` (of the data in `source`)."""
    exported = list(model.metadata.get("class_names") or [])
    if exported != list(names):
        raise ExportError(f"{model.metadata_source} names the classes "
                          f"{exported[:10]}, {source} has {list(names)[:10]}: the labels would "
                          f"mean other classes")
