"""INT8 post-training quantization of an ONNX export (tools/export.py --quantize int8).

The float32 graph that `tools/export.py` writes is quantized with ONNX Runtime's static
quantization (`onnxruntime.quantization.quantize_static`): QDQ format (standard
QuantizeLinear / DequantizeLinear pairs around each quantized operator, which ONNX Runtime's
CPU provider fuses into int8 kernels), int8 weights per output channel (symmetric), uint8
activations per tensor, their ranges the minimum and maximum seen on calibration images from
the config's validation split (`calibration_inputs`). Only the network is quantized: the
convolutions and fully connected layers of the backbone, the FPN and the heads, and the
ReLUs, residual additions and max pooling between them (`NETWORK_SCOPES`); normalisation,
anchors, box decoding, NMS, RoIAlign, resizing and argmax stay float32, as exported.

The int8 graph replaces the float32 one as the folder's `model.onnx` (one folder, one graph:
the tools and `Predictor` run it as they run any export); its `export.json` (and the copy
inside the graph) gains a "quantization" entry that says how it was made.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import ConfigError, is_positive_int
from .export import MODEL_FILE, QUANTIZE_PREFIX, ExportError, _written, write_metadata

logger = logging.getLogger(__name__)

QUANTIZE_CHOICES = ("int8",)
DEFAULT_CALIBRATION_IMAGES = 32
# the operators quantized, where they belong to the network (`NETWORK_SCOPES`)
OP_TYPES = ("Conv", "Gemm", "MatMul", "Relu", "Add", "MaxPool")
# the exporter names each node after the module it came from: the network's modules, per task
NETWORK_SCOPES = {
    "classification": ("/model/backbone/", "/model/fc/"),
    "detection": ("/backbone/", "/rpn/head/", "/roi_heads/box_head/"),
    "sem_seg": ("/backbone/", "/head/"),
}
CALIBRATION_NOTE = ("validation images spread evenly over the split (image k*M//N of its M, "
                    "k = 0..N-1, in the order the split lists them)")


def check_quantization(task: str, images: int) -> None:
    """Refuse what `--quantize int8` cannot do, before anything is exported (a Mask R-CNN
    config: `prepare_calibration`, which reads the config).

    Raises:
        ExportError: onnxruntime's quantization module missing, `images` < 1, a task whose
            quantization is not supported.
    """
    if not is_positive_int(images):
        raise ExportError(f"--calibration-images must be 1 or more, got {images!r}")
    if task not in NETWORK_SCOPES:
        raise ExportError(f"--quantize int8 quantizes classification, detection and sem_seg "
                          f"exports, not {task!r}")
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError as e:
        raise ExportError(f"--quantize int8 needs onnxruntime's quantization module "
                          f"(onnxruntime.quantization: pip install 'onnxruntime>=1.15'): "
                          f"{e}") from e


def prepare_calibration(task: str, config: str | os.PathLike, overrides: Sequence[str],
                        images: int) -> tuple[list[dict[str, np.ndarray]], str]:
    """`check_quantization`, then `calibration_inputs` of the config (`config`, `overrides`)
    that exports the graph."""
    check_quantization(task, images)
    if task == "detection":
        from resnet_detect.detection.config import load_config
        cfg = load_config(config, overrides)
        if cfg.model.mask_on:
            raise ExportError("--quantize int8 is for Faster R-CNN, classifier and segmentation "
                              "exports; a Mask R-CNN graph (model.mask_on: true) is not "
                              "quantized (its int8 masks were not measured): export it "
                              "without --quantize")
    elif task == "sem_seg":
        from resnet_detect.segmentation.build import load_config
        cfg = load_config(config, overrides)
    else:
        from .tasks import load_task_config
        try:
            _, cfg = load_task_config(config, overrides, task)
        except ConfigError as e:
            if "data.root" not in str(e):
                raise
            raise ExportError(f"--quantize int8 calibrates on the config's validation images, "
                              f"data.root/data.val_split: {e}") from e
    inputs, source = calibration_inputs(task, cfg, images)
    logger.info("int8 calibration on %d image(s) of %s%s", len(inputs), source,
                f" (of the {images} asked: the split has no more, or some could not be read)"
                if len(inputs) < images else "")
    return inputs, source


def spread(count: int, n: int) -> list[int]:
    """`n` indices of `count` items spread evenly (all of them when n >= count)."""
    if n >= count:
        return list(range(count))
    return [k * count // n for k in range(n)]


def calibration_inputs(task: str, cfg: Any, n: int) -> tuple[list[dict[str, np.ndarray]], str]:
    """(the graph inputs of up to `n` calibration images of `cfg`'s validation split, which
    split that is), each as the tools feed the graph: a detector's image resized by the
    test-time rule with its `original_size`, a classifier's resized and cropped, a
    segmenter's as it is.

    Raises:
        ExportError: the config has no validation images.
    """
    if task == "detection":
        from resnet_detect.detection.data.splits import build_val_dataset
        if not cfg.data.val.ann_file or not cfg.data.val.img_dir:
            raise ExportError("--quantize int8 calibrates on the config's validation images; "
                              "data.val.ann_file and data.val.img_dir are not set")
        dataset = build_val_dataset(cfg).dataset
        source = f"data.val ({cfg.data.val.ann_file})"

        def graph_input(sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
            return {"image": _hwc(sample["image"]),
                    "original_size": np.array([sample["height"], sample["width"]], np.int64)}
    elif task == "sem_seg":
        from resnet_detect.segmentation.data import build_dataset
        if not cfg.data.val.img_dir:
            raise ExportError("--quantize int8 calibrates on the config's validation images; "
                              "data.val.img_dir is not set")
        dataset = build_dataset(cfg, "val", unlabelled=True)
        source = f"data.val ({cfg.data.val.img_dir})"

        def graph_input(sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
            return {"image": _hwc(sample["image"])}
    else:
        from resnet_detect.backbones.data import (ImageFolderDataset, build_val_transform,
                                                  scan_image_folder)
        val_dir = Path(str(cfg.data.root)) / str(cfg.data.val_split)
        if not val_dir.is_dir():
            raise ExportError(f"--quantize int8 calibrates on the config's validation images: "
                              f"{val_dir} (data.root/data.val_split) is not a folder; set "
                              f"data.root")
        samples, names = scan_image_folder(val_dir)
        dataset = ImageFolderDataset(samples=samples, class_names=names, transform=(
            build_val_transform(image_size=cfg.data.image_size, resize=cfg.data.val_resize,
                                normalize=False, interpolation=cfg.data.val_interpolation)))
        source = f"data.root/data.val_split ({val_dir})"

        def graph_input(sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
            return {"image": _hwc(sample["image"])}
    if len(dataset) == 0:
        raise ExportError(f"--quantize int8 calibrates on the config's validation images; "
                          f"{source} has none")
    inputs = [graph_input(sample) for sample in (dataset[i] for i in spread(len(dataset), n))
              if sample is not None]  # (an unreadable image is named in a warning)
    if not inputs:
        raise ExportError(f"no calibration image of {source} could be read")
    return inputs, source


def _hwc(image: Any) -> np.ndarray:
    """A (3, H, W) uint8 tensor as the graph's (H, W, 3) array."""
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy())


class _Inputs:
    """The calibration inputs as onnxruntime's CalibrationDataReader."""

    def __init__(self, inputs: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._inputs = list(inputs)
        self._iterator: Iterator[Mapping[str, np.ndarray]] = iter(self._inputs)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return dict(next(self._iterator, None) or {}) or None

    def rewind(self) -> None:
        self._iterator = iter(self._inputs)


def network_nodes(graph: Any, task: str) -> list[str]:
    """The names of the nodes of `graph` (an onnx ModelProto) that are quantized: those of
    `OP_TYPES` within the task's `NETWORK_SCOPES`."""
    scopes = NETWORK_SCOPES[task]
    return [node.name for node in graph.graph.node
            if node.op_type in OP_TYPES and node.name.startswith(scopes)]


class _QuietOnnxRuntime(logging.Filter):
    """Drops ONNX Runtime's info messages (its quantizer's are a line per copied bias)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "onnxruntime" not in record.pathname


def quantize_graph(source: Path, target: Path, task: str,
                   inputs: Sequence[Mapping[str, np.ndarray]]) -> dict[str, Any]:
    """Write the int8 graph of the float32 graph `source` to `target`, calibrated on
    `inputs` (the graph's input dicts); returns what export.json records of it.

    The graph is first prepared as ONNX Runtime advises (`quant_pre_process`: constants
    folded into initializers, which the quantizer needs to quantize the weights and biases;
    the exporter's symbolic sizes are kept, so the symbolic shape inference is skipped).
    """
    import onnx
    import onnxruntime
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    root = logging.getLogger()
    quiet = _QuietOnnxRuntime()  # its quantizer logs each bias it copies on the root logger
    root.addFilter(quiet)
    try:
        with (tempfile.TemporaryDirectory(dir=target.parent, prefix=QUANTIZE_PREFIX) as work,
              _onnx_runtime_scratch_in(work)):
            prepared = Path(work) / "prepared.onnx"
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            nodes = network_nodes(onnx.load(str(prepared)), task)
            if not nodes:
                raise ExportError(f"{source}: no node of the network found to quantize")
            quantize_static(str(prepared), str(target), _Inputs(inputs),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(OP_TYPES),
                            nodes_to_quantize=nodes, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
    finally:
        root.removeFilter(quiet)
    # (the calibrator holds the quantized tensors of all the images at once: its option to
    # merge ranges in chunks, CalibMaxIntermediateOutputs, drops the chunks' data unused in
    # onnxruntime 1.32, so fewer images are the way to less memory)
    # ONNX Runtime's optimizer declared its own operator sets, which no node uses: the graph
    # keeps the standard one alone, as exported (other runtimes need not know the others)
    graph = onnx.load(str(target))
    used = {"", *(node.domain for node in graph.graph.node)}
    kept = [opset for opset in graph.opset_import if opset.domain in used]
    del graph.opset_import[:]
    graph.opset_import.extend(kept)
    onnx.save(graph, str(target))
    return {"dtype": "int8", "format": "QDQ", "weights": "int8, per output channel, symmetric",
            "activations": "uint8, per tensor, asymmetric", "calibration_method": "MinMax",
            "quantized_nodes": len(nodes), "onnxruntime": onnxruntime.__version__}


class _TemporaryFoldersIn:
    """`tempfile` as ONNX Runtime's quantization modules use it, their temporary folders
    made in `folder`."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def TemporaryDirectory(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 (tempfile's)
        kwargs.setdefault("dir", self.folder)
        return tempfile.TemporaryDirectory(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(tempfile, name)


_SCRATCH_MODULES = ("onnxruntime.quantization.shape_inference",
                    "onnxruntime.quantization.quantize")
_QUANTIZING = threading.Lock()  # (one int8 export at a time per process: one redirection)


@contextlib.contextmanager
def _onnx_runtime_scratch_in(folder: str) -> Iterator[None]:
    """ONNX Runtime's scratch copies of the graph (pre.quant.*, ort.quant.*: 60 MB for an R18
    detector) in `folder`, the export's work folder, which the next export removes after a
    kill (in the system's temporary folder they stayed for good); its modules' `tempfile`
    alone, not the process's (a thread's own temporary files stay where they were)."""
    modules = [sys.modules[name] for name in _SCRATCH_MODULES if name in sys.modules
               and hasattr(sys.modules[name], "tempfile")]
    with _QUANTIZING:
        for module in modules:
            module.tempfile = _TemporaryFoldersIn(folder)
        try:
            yield
        finally:
            for module in modules:
                module.tempfile = tempfile


def quantize_export(fp32_folder: Path, folder: Path, metadata: Mapping[str, Any],
                    inputs: Sequence[Mapping[str, np.ndarray]], source: str
                    ) -> dict[str, Any]:
    """Quantize the export in `fp32_folder` (its `metadata`) into `folder/model.onnx`,
    calibrated on `inputs` (of `source`), with its export.json; returns the export.json."""
    partial = folder / (MODEL_FILE + ".partial")  # write_metadata puts it in place
    with _written(partial):  # (a failure leaves no partial file, and the folder as it was)
        quantization = quantize_graph(fp32_folder / MODEL_FILE, partial, metadata["task"],
                                      inputs)
    quantization["calibration"] = {"images": len(inputs), "source": source,
                                   "selection": CALIBRATION_NOTE}
    fields = {k: v for k, v in metadata.items() if k not in ("model", "opset", "versions")}
    return write_metadata(folder, **fields, quantization=quantization)
