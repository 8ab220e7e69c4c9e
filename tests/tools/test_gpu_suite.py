"""benchmarks/gpu_suite.py --smoke: every phase of the GPU suite runs on the CPU at toy sizes,
so the suite a device session runs first cannot rot between those sessions."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def load_suite() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "benchmarks/gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_smoke_runs_every_phase_and_writes_the_table(tmp_path: Path) -> None:
    suite = load_suite()
    # the torchrun phase: the test below; det_fusion: its own test, with fused kernels
    phases = [p for p in suite.PHASES if p not in ("torchrun", "det_fusion")]
    result = suite.main(["--smoke", "--output", str(tmp_path), "--phases", *phases])
    assert result["errors"] == {}
    rows = result["rows"]
    assert [r["phase"] for r in rows] == [
        "data", "det_train", "det_train", "det_train_launches", "det_train_launches",
        "det_infer", "det_infer", "det_infer_launches", "det_infer_launches", "syncs", "syncs",
        "mask_train", "mask_train", "mask_train_launches", "mask_train_launches",
        "seg_train", "seg_train", "seg_train", "seg_train_launches", "seg_train_launches",
        "pretrain", "pretrain", "pretrain", "pretrain",
        "mask_bucket", "mask_bucket_launches", "mask_bucket", "mask_bucket_launches",
        "mask_bucket", "mask_bucket_launches", "mask_bucket",
        "det_nms", "det_nms", "det_nms_launches", "det_nms", "det_nms_launches",
        "det_compile", "det_compile", "det_compile",
        "seg_compile", "seg_compile", "seg_compile", "det_infer_compile", "det_infer_compile"]
    # the host's work per image at batch 1: the frozen BatchNorm folding kept between calls,
    # the anchors kept per size and the box coder on (x, y) pairs took ours from 982
    # dispatched operators to about 600 (torchvision: 740)
    launched = {r["model"]: r["dispatched_ops"] for r in rows if r["phase"] == "det_infer_launches"}
    assert launched["ours"] < 0.85 * launched["torchvision"]
    # the segmentation targets are checked in one read for the batch, not two per image
    seg_syncs = {r["model"]: r["python_syncs"] for r in rows if r["phase"] == "seg_train_launches"}
    assert seg_syncs["ours"] <= 1
    syncs = {r["model"]: r for r in rows if r["phase"] == "syncs"}
    for model in ("ours", "torchvision"):  # both read values and index with masks somewhere
        assert syncs[model]["python_syncs"] == sum(syncs[model]["by_call"].values()) > 0
    # target assignment and target checks use torch.where and one batched read: no masked
    # assignment, no int()/bool() per image (two images here)
    assert "__setitem__ with a bool mask" not in syncs["ours"]["by_call"]
    assert syncs["ours"]["by_call"].get("__bool__", 0) <= 1
    for phase in ("det_train", "mask_train", "seg_train"):
        ours, reference = [r for r in rows if r["phase"] == phase][:2]
        assert ours["model"] == "ours" and reference["model"] == "torchvision"
        assert ours["images_per_s"] > 0 and reference["images_per_s"] > 0
        assert ours["vs_reference"].endswith("x torchvision's images/s")
    native = [r for r in rows if r["phase"] == "seg_train"][2]
    assert native["model"] == "ours, PyTorch's upsample backward"
    assert native["images_per_s"] > 0 and native["vs_reference"].endswith("matrix products)")
    infer = next(r for r in rows if r["phase"] == "det_infer" and r["model"] == "ours")
    assert infer["ms_per_image"] > 0 and "same_detections" in infer
    pretrain = [r["model"] for r in rows if r["phase"] == "pretrain"]
    assert pretrain == ["JPEG loader alone (0 workers)", "ours resnet18, JPEG loader (0 workers)",
                        "ours", "torchvision"]
    det_compiled = [r for r in rows if r["phase"] == "det_compile"]
    assert [r["model"] for r in det_compiled] == [
        "ours, backbone+FPN compiled (train.compile)", "ours", "torchvision"]
    infer_compiled = [r for r in rows if r["phase"] == "det_infer_compile"]
    assert [r["model"] for r in infer_compiled] == ["ours, eager", "ours, backbone+FPN compiled"]
    assert infer_compiled[0]["detections"] == infer_compiled[1]["detections"]
    assert all(r["ms_per_image"] > 0 and r["first_call_s"] > 0 for r in infer_compiled)
    seg_compiled = [r for r in rows if r["phase"] == "seg_compile"]
    assert [r["model"] for r in seg_compiled] == [
        "ours, backbone and heads compiled (train.compile)", "ours", "torchvision"]
    for row in (det_compiled[0], seg_compiled[0]):
        assert row["first_step_s"] > 0 and row["images_per_s"] > 0
        assert "x eager, " in row["vs_reference"] and "x torchvision, " in row["vs_reference"]
    nms = [r for r in rows if r["phase"].startswith("det_nms")]
    assert [(r["phase"], r["model"]) for r in nms] == [
        ("det_nms", "ours, RPN NMS per image on one stream"),
        ("det_nms", "ours, RPN NMS on 4 streams"),
        ("det_nms_launches", "ours, RPN NMS on 4 streams"),
        ("det_nms", "ours, RPN NMS as padded matrix products"),
        ("det_nms_launches", "ours, RPN NMS as padded matrix products")]
    assert nms[0]["proposals"] > 0 and nms[0]["detections"] > 0
    assert nms[0]["images_differing_when_repeated"] == 0
    for lever in (nms[1], nms[3]):
        assert lever["vs_reference"].endswith("x one stream")
        assert lever["images_with_other_proposals"] == lever["images_with_other_detections"] == 0
    for launches_row in (nms[2], nms[4]):
        assert launches_row["dispatched_ops"] > 0
        assert "ops dispatched" in launches_row["vs_reference"]
    bucket = [r for r in rows if r["phase"] == "mask_bucket"]
    assert [r["model"] for r in bucket] == [
        "ours, RoIs as they come", "ours, RoIs padded to a multiple of 16",
        "ours, RoIs padded to a multiple of 16", "torchvision"]
    assert [r["setting"].split(", ")[1] for r in bucket] == [
        "cudnn.benchmark off", "cudnn.benchmark off", "cudnn.benchmark on", "cudnn.benchmark off"]
    # the same first step's mask loss; the padded heads convolved whole buckets only
    assert bucket[0]["loss_mask"] > 0
    assert bucket[0]["loss_mask"] == pytest.approx(bucket[1]["loss_mask"], rel=1e-5)
    assert bucket[1]["loss_mask"] == bucket[2]["loss_mask"]
    assert any(count % 16 for count in bucket[0]["convolved_roi_counts"])
    assert all(count % 16 == 0 for r in bucket[1:3] for count in r["convolved_roi_counts"])
    assert "x as they come, " in bucket[1]["vs_reference"]
    # every measured row says how long its warmup took (where a phase's time goes)
    assert all(r["warmup_s"] > 0 for r in rows if "images_per_s" in r and "warmup_peak_gib" in r)
    written = json.loads((tmp_path / "suite.json").read_text())
    assert written["rows"] == json.loads(json.dumps(rows, default=str))
    table = (tmp_path / "suite.md").read_text()
    assert table.count("\n| ") == len(rows) + 1  # header + one line per row


def test_det_fusion_counts_the_fused_calls_and_puts_the_losses_side_by_side(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With reference kernels standing in for cuDNN's on the CPU (tests/backbones/
    test_fused_conv.py), the phase's fused rows go through the fused calls: ResNet-18's 8
    blocks (two calls each) and the RPN head on 5 levels; the losses of the fused and the
    plain steps agree, before and after the timed steps, and so do the detections."""
    from tests.backbones.test_fused_conv import reference_kernels
    suite_module = load_suite()
    suite = suite_module.Suite(tmp_path, suite_module.SMOKE, torch.device("cpu"))
    suite_module.phase_data(suite)
    reference_kernels(monkeypatch)
    suite_module.phase_detection_fusion(suite)
    rows = [r for r in suite.rows if r["phase"] == "det_fusion"]
    assert [r["phase"] for r in suite.rows] == [
        "data", "det_fusion", "det_fusion", "det_fusion_launches", "det_fusion", "det_fusion",
        "det_fusion", "det_fusion"]
    assert [(r["model"], r["setting"]) for r in rows] == [
        ("ours, plain convolutions", "fp32, batch 2"),
        ("ours, conv+bias+ReLU fused (cuDNN)", "fp32, batch 2"),
        ("ours, plain convolutions, again", "fp32, batch 2"), ("torchvision", "fp32, batch 2"),
        ("ours, plain convolutions", "fp32, batch 1"),
        ("ours, conv+bias+ReLU fused (cuDNN)", "fp32, batch 1")]
    assert "x plain before it, " in rows[1]["vs_reference"]
    assert all(r["new_size_step_s"] > 0 for r in rows[:3])
    assert rows[5]["detections"] == rows[4]["detections"]
    plain, fused, again = rows[:3]
    assert fused["fused_calls"] == 8 * 2 + 5 and plain["fused_calls"] == again["fused_calls"] == 0
    assert fused["refusals"] == {} and rows[-1]["fused_calls"] == 8 * 2 + 5
    for key in ("first_losses", "losses_after_steps"):
        assert plain[key].keys() == fused[key].keys()
        for name, value in plain[key].items():
            assert fused[key][name] == pytest.approx(value, rel=1e-4), (key, name)
    assert rows[-1]["matched_detections"] == rows[-1]["detections"] > 0


@pytest.mark.parametrize("mask_on", [False, True])
def test_host_syncs_per_training_step_do_not_grow_with_the_batch(tmp_path: Path,
                                                                 mask_on: bool) -> None:
    """The input check, the RPN's proposal filters, the RoI sampler, each multi-level pooling
    and the mask head's positives read back once each for the whole batch; the losses read
    nothing back. Not counted: the CPU RoIAlign's grouping of RoIs by sampling grid (its
    reads depend on the boxes; a GPU runs torchvision's kernel instead)."""
    import dataclasses
    import traceback
    suite_module = load_suite()

    class OutsideCpuRoIAlign(suite_module.SyncCounter):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            before = dict(self.counts)
            out = super().__torch_function__(func, types, args, kwargs)
            if self.counts != before and any(
                    frame.filename.endswith("resnet_detect/detection/roi_align.py")
                    for frame in traceback.extract_stack()):
                self.counts.clear()
                self.counts.update(before)
            return out

    counts = []
    for batch in (2, 5):
        sizes = dataclasses.replace(suite_module.SMOKE, det_batch=batch, scenes=batch)
        suite = suite_module.Suite(tmp_path / str(batch), sizes, torch.device("cpu"))
        suite_module.phase_data(suite)
        images, targets = suite_module.detection_batch(suite, mask_on=mask_on)
        model, _ = suite_module.detectors(suite, mask_on=mask_on)
        model.train()
        counter = OutsideCpuRoIAlign()
        with counter:
            sum(model(images, targets).values()).backward()
        counts.append(sum(counter.counts.values()))
    # bf43daa, reading per image and per level: 16 and 19 without masks, 24 and 33 with them
    assert counts == ([4, 4] if not mask_on else [6, 6])


def test_the_torchrun_phase_gives_the_tools_valid_configs(tmp_path: Path) -> None:
    """The torchrun phase launches tools/train.py and tools/pretrain.py (tests/tools run both
    under torchrun already; a launch costs ~20 s here): what it passes them must load, and
    give a valid schedule, at the full suite's sizes too."""
    from resnet_detect.engine.run_length import lengths_of_run
    from resnet_detect.engine.train_settings import check_train_choices
    from resnet_detect.engine.tasks import load_task_config
    suite = load_suite()
    for sizes in (suite.FULL, suite.SMOKE):
        runs = suite.torchrun_runs(suite.Suite(tmp_path, sizes, torch.device("cpu")))
        assert sorted(runs) == (["pretrain", "train"] if sizes is suite.FULL else ["train"])
        for tool, args in runs.items():
            _, cfg = load_task_config(args[0], [*args[1:], f"train.output_dir={tmp_path}"])
            check_train_choices(cfg.train)
            lengths = lengths_of_run(cfg, train_size=4096)
            assert lengths["max_iter"] == 2 and lengths["steps"] == []


def test_a_failing_phase_is_recorded_and_the_others_still_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suite = load_suite()

    def broken(_: object) -> None:
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setitem(suite.RUNNERS, "det_infer", broken)
    monkeypatch.setitem(suite.RUNNERS, "data", lambda s: s.add("data", "skipped", "test"))
    result = suite.main(["--smoke", "--output", str(tmp_path), "--phases", "data", "det_infer",
                         "data"])
    assert list(result["errors"]) == ["det_infer"]
    assert [r["phase"] for r in result["rows"]] == ["data", "data"]
    assert "error in det_infer: RuntimeError: CUDA error: out of memory" in \
        (tmp_path / "suite.md").read_text()


def test_without_a_gpu_the_full_suite_says_what_to_run_instead(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the full suite would run")
    with pytest.raises(SystemExit, match=r"needs a CUDA GPU .*--smoke runs it on the CPU"):
        load_suite().main(["--output", str(tmp_path)])


def test_bf16_steps_run_float32_products_exact_and_fp32_steps_with_tf32() -> None:
    """The suite allows TF32 for its fp32 rows; its bf16 training steps timed the float32
    products (the upsampling's backward as matrix products) with TF32 too, faster than a
    training runs them (PyTorch's default: exact float32)."""
    suite = load_suite()
    x = torch.ones(2, 2, requires_grad=True)
    seen: list[tuple[str, bool]] = []

    class Recorded(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):  # type: ignore[no-untyped-def]
            seen.append(("forward", torch.backends.cuda.matmul.allow_tf32))
            return t * 1.0

        @staticmethod
        def backward(ctx, grad):  # type: ignore[no-untyped-def]
            seen.append(("backward", torch.backends.cuda.matmul.allow_tf32))
            return grad

    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True  # as the suite sets it on a GPU
    try:
        for precision, tf32 in (("bf16", False), ("fp32", True)):
            seen.clear()
            optimizer = torch.optim.SGD([x], lr=0.0)
            suite._train_step(torch.nn.Module(), optimizer, torch.device("cpu"), precision,
                              lambda: {"loss": Recorded.apply(x).sum()})()
            assert seen == [("forward", tf32), ("backward", tf32)]
            assert torch.backends.cuda.matmul.allow_tf32  # (the suite's setting back after)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed
