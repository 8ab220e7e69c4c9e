"""An export that says something else, written as tools/export.py writes what an export says:
inside the graph (what the tools read) and in export.json beside it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx


def rewrite_export_metadata(onnx_file: Path, metadata: dict[str, Any]) -> None:
    graph = onnx.load(str(onnx_file))
    del graph.metadata_props[:]
    graph.metadata_props.add(key="export_json", value=json.dumps(metadata))
    onnx.save(graph, str(onnx_file))
    onnx_file.with_name("export.json").write_text(json.dumps(metadata))
