"""CPU inference of two exports of one model, typically float32 and `--quantize int8`: ONNX
Runtime ms/image of each on the same validation images, timed in turns in one run.

Usage:
  python benchmarks/onnx_int8.py CONFIG --exports FP32_DIR INT8_DIR [--images 20]
      [--repeats 5] [--threads 1] [key=value ...]

The images are the first --images of the config's validation split spread evenly (those
`--quantize int8` would calibrate on with that count), each prepared as the tools feed the
graph (a detector's resized by the test-time rule). Each round runs every image through each
graph; the rounds alternate the graphs (benchmarks/timing.py) and the first is dropped.
Prints the median ms/image of each export and their ratio (> 1: the second is faster), with
the CPU model and its int8 instructions (VNNI, AMX), whose presence decides int8 speed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import onnxruntime  # noqa: E402

from resnet_detect.engine.export import model_path, read_metadata  # noqa: E402
from resnet_detect.engine.quantize import calibration_inputs  # noqa: E402
from resnet_detect.engine.tasks import config_task, load_task_config  # noqa: E402
from timing import time_interleaved  # noqa: E402

INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_description() -> str:
    """The CPU's model name and which int8 instructions /proc/cpuinfo lists."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), "unknown CPU")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines()
                  if line.startswith("flags")), [])
    present = [f for f in INT8_FLAGS if f in flags]
    return f"{name}; int8 instructions: {', '.join(present) or 'none (AVX2 or older)'}"


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--exports", nargs=2, required=True, metavar=("FIRST", "SECOND"))
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    task = config_task(args.config, args.overrides)
    _, cfg = load_task_config(args.config, args.overrides, task)
    inputs, source = calibration_inputs(task, cfg, args.images)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    sessions = {}
    for folder in args.exports:
        session = onnxruntime.InferenceSession(str(model_path(folder)), options,
                                               providers=["CPUExecutionProvider"])
        quantization = read_metadata(folder, task, (), session)[0].get("quantization") or {}
        sessions[f"{folder} ({quantization.get('dtype', 'float32')})"] = session

    def run(session: onnxruntime.InferenceSession):
        return lambda: [session.run(None, feed) for feed in inputs]
    times = time_interleaved({name: run(s) for name, s in sessions.items()}, args.repeats,
                             inference=False)
    print(f"{cpu_description()}; onnxruntime {onnxruntime.__version__}, {args.threads} "
          f"thread(s); {len(inputs)} images of {source}, {args.repeats} rounds")
    medians = {name: 1000 * statistics.median(t) / len(inputs) for name, t in times.items()}
    for name, ms in medians.items():
        print(f"  {name}: {ms:.1f} ms/image")
    first, second = medians.values()
    print(f"  ratio first / second: {first / second:.2f}x")
    return medians


if __name__ == "__main__":
    main()
