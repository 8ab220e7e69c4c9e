"""detection.Predictor: test-time resizing, boxes mapped back to input pixels, dataset ids."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from resnet_detect import backbones
from resnet_detect.detection import Predictor, build_model
from resnet_detect.detection.config import load_config
from resnet_detect.engine.data import CategoryMapping, UnreadableImageError
from resnet_detect.detection.training import make_provenance

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs/synthetic/faster_rcnn_R_18_FPN.yaml"
TINY = ["model.backbone.weights=null", "model.fpn.out_channels=32",
        "model.roi_heads.fc_dims=[64,64]",
        "data.val.min_size=64", "data.val.max_size=200"]
MAPPING = CategoryMapping((2, 7, 40), ("cat", "dog", "emu"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config(CONFIG, TINY + ["model.num_classes=3"])
    torch.manual_seed(0)
    model = build_model(cfg)
    torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.5)
    path = tmp_path_factory.mktemp("ckpt") / "model_final.pth"
    backbones.save_checkpoint(path, model.state_dict(), make_provenance(cfg, MAPPING))
    return path


def test_boxes_in_input_pixels_and_dataset_ids(checkpoint: Path) -> None:
    # device="auto", as the tools take it (it was refused as no device)
    predictor = Predictor(None, weights=checkpoint, overrides=["model.roi_heads.score_thresh=0.0"],
                          device="auto")
    assert predictor.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (80, 120, 3), dtype=np.uint8)
    out = predictor(image)
    # the same model by hand: resize the short edge 80 -> 64 (120 -> 96), run, scale back
    resized = cv2.resize(image, (96, 64), interpolation=cv2.INTER_LINEAR)
    with torch.no_grad():
        ref = predictor.model([torch.from_numpy(resized.transpose(2, 0, 1).copy())])[0]
    assert len(out["boxes"]) == len(ref["boxes"]) > 0
    scale = np.array([120 / 96, 80 / 64, 120 / 96, 80 / 64], dtype=np.float32)
    np.testing.assert_allclose(out["boxes"], ref["boxes"].numpy() * scale, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(out["scores"], ref["scores"].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(out["labels"], np.array([2, 7, 40])[ref["labels"].numpy()])
    assert out["class_names"] == [{2: "cat", 7: "dog", 40: "emu"}[c] for c in out["labels"]]
    assert out["boxes"][:, 2].max() <= 120 + 1e-3 and out["boxes"][:, 3].max() <= 80 + 1e-3
    assert predictor.class_names == ["cat", "dog", "emu"]


def test_test_time_overrides(checkpoint: Path) -> None:
    image = np.random.default_rng(1).integers(0, 256, (80, 120, 3), dtype=np.uint8)
    few = Predictor(None, weights=checkpoint, overrides=[
        "model.roi_heads.score_thresh=0.0", "model.roi_heads.detections_per_image=5"])(image)
    assert len(few["boxes"]) == 5
    none = Predictor(None, weights=checkpoint,
                     overrides=["model.roi_heads.score_thresh=1.0"])(image)
    assert none["boxes"].shape == (0, 4) and none["labels"].shape == (0,)
    # a 2 x 1000 strip resizes to 1 x 200 (its 0.4 px short side was a cv2 error)
    strip = Predictor(None, weights=checkpoint, overrides=["model.roi_heads.score_thresh=0.0"])(
        np.full((2, 1000, 3), 128, np.uint8))
    assert strip["boxes"].shape[1] == 4 and (strip["boxes"][:, 3] <= 2 + 1e-3).all()


def test_a_normalisation_the_weights_were_not_trained_with_is_named(
        checkpoint: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The weights keep theirs; an override asking for another was dropped without a word."""
    image = np.random.default_rng(1).integers(0, 256, (80, 120, 3), dtype=np.uint8)
    plain = Predictor(None, weights=checkpoint, overrides=["model.roi_heads.score_thresh=0.0"])
    with caplog.at_level(logging.WARNING):
        other = Predictor(None, weights=checkpoint, overrides=[
            "model.roi_heads.score_thresh=0.0", "model.pixel_mean=[0,0,0]"])
    assert (f"model.pixel_mean [0.0, 0.0, 0.0] is not applied: {checkpoint} was trained on "
            f"images normalised with [") in caplog.text
    assert "pixel_std" not in caplog.text
    np.testing.assert_array_equal(other(image)["boxes"], plain(image)["boxes"])


def test_bad_input_is_rejected(checkpoint: Path) -> None:
    predictor = Predictor(None, weights=checkpoint)
    with pytest.raises(ValueError, match="uint8"):
        predictor(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"non-empty .* got uint8 array of shape \(0, 10, 3\)"):
        predictor(np.zeros((0, 10, 3), dtype=np.uint8))  # was a ZeroDivisionError
    with pytest.raises(ValueError, match=r"num_classes is 5 but the weights"):
        Predictor(CONFIG, weights=checkpoint, overrides=TINY + ["model.num_classes=5"])
    seg_config = ROOT / "configs/synthetic/deeplabv3_R_18_os16.yaml"  # its keys were "unknown"
    with pytest.raises(ValueError, match=r"deeplabv3_R_18_os16.yaml is for task 'sem_seg', not "
                                         r"'detection': tools/train.py, tools/eval.py and "
                                         r"segmentation.Predictor read it"):
        Predictor(seg_config, weights=checkpoint)
    # a misspelt key of a config given as a mapping is the caller's, not the checkpoint's
    mine = OmegaConf.to_container(load_config(CONFIG, TINY + ["model.num_classes=3"]))
    mine["model"]["roi_heads"]["scor_thresh"] = 0.1
    with pytest.raises(ValueError, match=r"unknown config key 'model.roi_heads.scor_thresh' in "
                                         r"the config given to Predictor \(did you mean "
                                         r"'score_thresh'\?\)"):
        Predictor(mine, weights=checkpoint)


def test_a_config_that_changes_what_the_weights_compute_is_refused(checkpoint: Path) -> None:
    # other anchors keep every tensor's shape: loading would silently give other boxes
    with pytest.raises(ValueError, match=rf"weights from {checkpoint} do not fit this config: "
                       r"model.anchor_generator.sizes is \[\[16\],\[32\],\[64\],\[128\]\], the "
                       r"weights need \[\[20\],\[40\],\[80\],\[160\]\].*set "
                       r"model.anchor_generator.sizes=\[\[20\],\[40\],\[80\],\[160\]\]$"):
        Predictor(CONFIG, weights=checkpoint, overrides=TINY + [
            "model.anchor_generator.sizes=[[16],[32],[64],[128]]"])
    cfg = load_config(CONFIG, TINY + ["model.num_classes=3", f"model.weights={checkpoint}",
                                      "model.roi_heads.pooler_aligned=true"])
    with pytest.raises(ValueError, match="model.roi_heads.pooler_aligned is true, the weights "
                       "need false"):
        build_model(cfg)
    # where the stride sits does not matter for a ResNet-18's basic blocks
    Predictor(CONFIG, weights=checkpoint, overrides=TINY + ["model.backbone.stride_in_1x1=true"])


def test_the_demo_draws_from_its_min_score_below_the_config_threshold(checkpoint: Path) -> None:
    """tools/demo.py --min-score under the config's score_thresh drew nothing in between: the
    model had dropped those detections already. The renderer now sets the model's threshold
    to it, as detectron2's demo does."""
    from resnet_detect.detection.predictor import build_renderer
    from resnet_detect.engine.visualize import draw_detections, palette

    image = np.random.default_rng(3).integers(0, 256, (80, 120, 3), dtype=np.uint8)
    cfg = load_config(CONFIG, TINY + ["model.num_classes=3", "model.roi_heads.score_thresh=0.8"])
    low = Predictor(cfg, weights=checkpoint, overrides=["model.roi_heads.score_thresh=0.7"])
    found = low(image)
    assert ((found["scores"] >= 0.7) & (found["scores"] < 0.8)).any()  # what was lost
    rgb = palette(3)
    colours = {cid: tuple(int(v) for v in rgb[i]) for i, cid in enumerate(low.category_ids)}
    expected = draw_detections(image, found, colours, 0.7)
    np.testing.assert_array_equal(build_renderer(cfg, checkpoint, (), 0.7)(image), expected)
    at_config = Predictor(cfg, weights=checkpoint)(image)
    assert not np.array_equal(draw_detections(image, at_config, colours, 0.7), expected)


def test_a_config_that_tests_at_another_size_than_training_says_so(
        checkpoint: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A model fine-tuned at 64 px scored AP 0 when evaluated with the 1x config's 800 px,
    silently; the checkpoint records the size it was evaluated at in training."""
    with caplog.at_level(logging.WARNING):
        Predictor(CONFIG, weights=checkpoint, overrides=TINY)  # the same sizes: quiet
        assert "records a config that tests" not in caplog.text
        Predictor(CONFIG, weights=checkpoint, overrides=TINY[:-2])  # the config's own sizes
    assert f"{checkpoint} records a config that tests at data.val.min_size=64 " \
           "data.val.max_size=200 (its evaluations in training); this config resizes test " \
           "images to " in caplog.text


def test_an_exports_detections_per_image_sets_what_its_evaluation_scores(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An export keeping 300 detections was scored at COCO's 100 (the config's value)."""
    from resnet_detect.detection import predictor
    from resnet_detect.detection.training import scored_detections

    class ExportedGraph:
        mask_on = False
        metadata = {"detections_per_image": 300, "mask_on": False, "score_thresh": 0.05,
                    "nms_thresh": 0.5, "resize": {"short_side": 800, "max_size": 1333},
                    "class_names": ["cell"], "category_ids": [1]}

        def __init__(self, path: object, device: object) -> None:
            pass

    monkeypatch.setattr(predictor, "OnnxDetector", ExportedGraph)
    loaded = predictor.load_detector(
        Path(__file__).resolve().parents[2] / "configs/detection/faster_rcnn_R_50_FPN_1x.yaml",
        weights="export/model.onnx")
    assert scored_detections(loaded.cfg) == 300


def test_an_export_without_a_size_cap_names_the_configs_cap(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A max_size of None (no cap) was dropped from the comparison as a key not recorded."""
    from resnet_detect.detection import predictor

    class ExportedGraph:
        mask_on = False
        metadata = {"mask_on": False, "resize": {"short_side": 800, "max_size": None},
                    "class_names": ["cell"], "category_ids": [1]}

        def __init__(self, path: object, device: object) -> None:
            pass

    monkeypatch.setattr(predictor, "OnnxDetector", ExportedGraph)
    with caplog.at_level("WARNING", logger="resnet_detect.detection.predictor"):
        predictor.load_detector(
            Path(__file__).resolve().parents[2] / "configs/detection/faster_rcnn_R_50_FPN_1x.yaml",
            weights="export/model.onnx")
    assert ("runs as it was exported, not as the config says: data.val.max_size null (config: "
            "1333); export again") in caplog.text


def test_building_a_predictor_leaves_the_random_stream_alone(checkpoint: Path) -> None:
    """The model's random start (replaced by the weights) drew from torch's generator: a
    user's seeded run drew other numbers after building one."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Predictor(None, weights=checkpoint)
    assert torch.equal(torch.rand(3), expected)


def test_a_predictor_works_under_a_float64_default_dtype(checkpoint: Path) -> None:
    """torch.set_default_dtype(torch.float64) (a scientific caller's) built float64 weights:
    'Input type (float) and bias type (double) should be the same'."""
    expected = Predictor(None, weights=checkpoint)(np.full((60, 80, 3), 90, np.uint8))
    torch.set_default_dtype(torch.float64)
    try:
        predictor = Predictor(None, weights=checkpoint)
        got = predictor(np.full((60, 80, 3), 90, np.uint8))
        assert torch.get_default_dtype() == torch.float64  # the caller's, after
    finally:
        torch.set_default_dtype(torch.float32)
    assert {p.dtype for p in predictor.model.parameters()} == {torch.float32}
    assert len(expected["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        np.testing.assert_array_equal(got[key], expected[key])


def test_each_cpu_prediction_hands_its_freed_memory_back_unless_told_not_to(
        checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr("resnet_detect.detection.predictor.release_free_memory",
                        lambda: calls.append(1))
    image = np.zeros((60, 80, 3), np.uint8)
    Predictor(None, weights=checkpoint)(image)
    assert calls == [1]
    Predictor(None, weights=checkpoint, release_memory=False)(image)
    assert calls == [1]


def test_a_batch_gives_each_images_own_detections(checkpoint: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Images of one size: the batch's detections are each image's own call's (up to the
    rounding of batched kernels); of several sizes: each mapped to its own image's pixels."""
    calls = []
    monkeypatch.setattr("resnet_detect.detection.predictor.release_free_memory",
                        lambda: calls.append(1))
    predictor = Predictor(None, weights=checkpoint, overrides=["model.roi_heads.score_thresh=0.0"])
    rng = np.random.default_rng(1)
    same = [rng.integers(0, 256, (80, 120, 3), dtype=np.uint8) for _ in range(3)]
    batch = predictor.predict_batch(same)
    assert calls == [1]  # the freed memory handed back once per batch
    for image, out in zip(same, batch, strict=True):
        alone = predictor(image)
        assert len(out["boxes"]) == len(alone["boxes"]) > 0
        np.testing.assert_allclose(out["boxes"], alone["boxes"], atol=1e-3)
        np.testing.assert_allclose(out["scores"], alone["scores"], atol=1e-5)
        np.testing.assert_array_equal(out["labels"], alone["labels"])
        assert out["class_names"] == alone["class_names"]
    sizes = [(80, 120), (100, 90), (64, 200)]
    mixed = predictor.predict_batch(np.stack([np.zeros((100, 200, 3), np.uint8)] * 2))
    assert len(mixed) == 2  # an (N, H, W, 3) array is N images
    mixed = predictor.predict_batch([rng.integers(0, 256, (*s, 3), dtype=np.uint8)
                                     for s in sizes])
    for (height, width), out in zip(sizes, mixed, strict=True):
        boxes = out["boxes"]
        assert len(boxes) > 0 and (boxes >= -1e-3).all()
        assert (boxes[:, [0, 2]] <= width + 1e-3).all()
        assert (boxes[:, [1, 3]] <= height + 1e-3).all()
        assert (np.diff(out["scores"]) <= 0).all()
    assert predictor.predict_batch([]) == []
    assert len(predictor.predict_batch(image for image in same[:2])) == 2
    with pytest.raises(ValueError, match=r"^Predictor expects a non-empty \(H, W, 3\) uint8"):
        predictor(same[0].astype(np.float32))  # one image: no index in the message
    with pytest.raises(ValueError, match=r"predict_batch takes a list of images .*call the "
                                         r"Predictor itself for one image"):
        predictor.predict_batch(same[0])
    with pytest.raises(ValueError, match=r"images\[1\]: Predictor expects a non-empty \(H, W, 3\) "
                                         r"uint8 RGB array or an image file's path, got float32"):
        predictor.predict_batch([same[0], same[1].astype(np.float32)])


def test_test_compile_compiles_the_backbone_and_detects_the_same(checkpoint: Path) -> None:
    """test.compile as train.compile: the backbone + FPN under torch.compile (aot_eager here,
    as inductor compiles for minutes on these CPUs), the same detections at two sizes."""
    overrides = ["model.roi_heads.score_thresh=0.0"]
    eager = Predictor(None, weights=checkpoint, overrides=overrides)
    compiled = Predictor(None, weights=checkpoint, overrides=[*overrides,
                                                             "test.compile=aot_eager"])
    assert compiled.model.backbone._compiled_call_impl is not None
    assert eager.model.backbone._compiled_call_impl is None
    for shape in ((80, 120, 3), (96, 72, 3)):
        image = np.random.default_rng(shape[0]).integers(0, 256, shape, dtype=np.uint8)
        expected, got = eager(image), compiled(image)
        assert len(got["boxes"]) == len(expected["boxes"]) > 0
        np.testing.assert_array_equal(got["labels"], expected["labels"])
        np.testing.assert_allclose(got["boxes"], expected["boxes"], atol=1e-4)


def test_bad_test_compile_values_are_named(checkpoint: Path) -> None:
    with pytest.raises(ValueError, match=r"test.compile must be false, true or a torch.compile "
                                         r"backend \(.*\), got 'fastest'"):
        Predictor(None, weights=checkpoint, overrides=["test.compile=fastest"])
    with pytest.raises(ValueError, match=r"test.compile_mode=reduce-overhead needs "
                                         r"test.compile: true"):
        Predictor(None, weights=checkpoint, overrides=["test.compile_mode=reduce-overhead"])


def test_an_export_named_with_test_compile_runs_uncompiled_and_says_so(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from resnet_detect.detection import predictor

    class ExportedGraph:
        mask_on = False
        metadata = {"mask_on": False, "resize": {"short_side": 800, "max_size": 1333},
                    "class_names": ["cell"], "category_ids": [1]}

        def __init__(self, path: object, device: object) -> None:
            pass

    monkeypatch.setattr(predictor, "OnnxDetector", ExportedGraph)
    with caplog.at_level("WARNING", logger="resnet_detect.engine.compilation"):
        Predictor(None, weights="export/model.onnx")
        assert not caplog.text
        Predictor(None, weights="export/model.onnx", overrides=["test.compile=true"])
    assert ("test.compile=inductor is not applied: export/model.onnx is run by ONNX Runtime"
            in caplog.text)


def test_an_export_traces_the_eager_model_whatever_test_compile_says(
        checkpoint: Path, tmp_path: Path) -> None:
    from resnet_detect.detection.training import export_model
    export_model(str(CONFIG), str(checkpoint), tmp_path,
                 [*TINY, "model.roi_heads.score_thresh=0.0", "test.compile=aot_eager"])
    image = np.random.default_rng(5).integers(0, 256, (80, 120, 3), dtype=np.uint8)
    expected = Predictor(None, weights=checkpoint,
                         overrides=["model.roi_heads.score_thresh=0.0"])(image)
    got = Predictor(None, weights=tmp_path / "model.onnx")(image)
    assert len(got["boxes"]) == len(expected["boxes"]) > 0
    np.testing.assert_allclose(got["boxes"], expected["boxes"], atol=1e-2)


@pytest.mark.parametrize("what", ["whole", "tiles", "views", "box graph", "pasted graph"])
def test_rle_masks_are_the_bitmasks_encoded_without_pasting_them_whole(
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
        what: str) -> None:
    """mask_format="rle": pycocotools' encoding of each bitmask, bit for bit, with the
    boxes, scores and labels unchanged; paste_masks (a photo's D full-size masks at once)
    is never called, except inside a graph that pastes its masks itself."""
    from pycocotools import mask as mask_utils

    from resnet_detect.detection import export, rcnn, tiles, tta
    from resnet_detect.detection.training import export_model
    from tests.detection.test_tta import EVERY, tiny_mask_rcnn

    weights = tiny_mask_rcnn(tmp_path_factory.mktemp("mask_rcnn"))
    settings = {"tiles": ["test.tiles.size=[64,64]", "test.tiles.overlap=0.25"],
                "views": ["test.min_sizes=[48,64]", "test.flip=true"]}.get(what, [])
    if what.endswith("graph"):
        export_model(None, str(weights), weights.parent / "onnx", overrides=EVERY,
                     mask_output=what.split()[0])
        weights = weights.parent / "onnx/model.onnx"
    image = np.random.default_rng(1).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    bitmasks = Predictor(None, weights=weights, overrides=EVERY + settings)(image)
    assert len(bitmasks["masks"]) == 100 and bitmasks["masks"].any(axis=(1, 2)).mean() > 0.5
    for module in (rcnn, tiles, tta, export):
        monkeypatch.setattr(module, "paste_masks", None)  # called, it fails
    rles = Predictor(None, weights=weights, overrides=EVERY + settings, mask_format="rle")(image)
    for key in ("boxes", "scores", "labels"):
        np.testing.assert_array_equal(rles[key], bitmasks[key])
    assert rles["class_names"] == bitmasks["class_names"]
    assert len(rles["masks"]) == 100
    for rle, mask in zip(rles["masks"], bitmasks["masks"], strict=True):
        expected = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert rle == {"size": [100, 150], "counts": expected["counts"].decode("ascii")}


def test_a_mask_format_that_is_not_one_is_named(checkpoint: Path) -> None:
    with pytest.raises(ValueError, match=r"mask_format must be one of bitmask, rle, got 'RLE'"):
        Predictor(None, weights=checkpoint, mask_format="RLE")
    # a Faster R-CNN has no masks in either format
    assert "masks" not in Predictor(None, weights=checkpoint, mask_format="rle")(
        np.zeros((60, 80, 3), np.uint8))


def test_weights_that_record_no_category_ids_take_the_config_val_files(
        checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Checkpoints of before 2026-12-02 (mid-run ones) record no category ids: their classes
    were scored as ids 1..K, another numbering than the data's 2, 7, 40 (AP per class
    swapped, a class at 0), and exported as names '1'..'3'."""
    import json
    state = torch.load(checkpoint, weights_only=True)
    state["provenance"] = {k: v for k, v in state["provenance"].items()
                           if k not in ("category_ids", "class_names", "config")}
    torch.save(state, tmp_path / "model_0000200.pth")
    val = tmp_path / "val.json"
    val.write_text(json.dumps({"images": [], "annotations": [], "categories": [
        {"id": 40, "name": "emu"}, {"id": 2, "name": "cat"}, {"id": 7, "name": "dog"}]}))
    predictor = Predictor(CONFIG, weights=tmp_path / "model_0000200.pth",
                          overrides=[*TINY, f"data.val.ann_file={val}"])
    assert (predictor.category_ids, predictor.class_names) == ([2, 7, 40], ["cat", "dog", "emu"])
    assert any("model_0000200.pth records no category ids (an older checkpoint): its classes "
               f"are taken to be the categories of data.val.ann_file {val}, ids [2, 7, 40], "
               f"in that order"
               in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    # weights that name their classes: matched by name, not by position (a file numbering
    # them otherwise drew class 0 under another's name)
    state["provenance"]["class_names"] = ["dog", "emu", "cat"]
    torch.save(state, tmp_path / "named.pth")
    predictor = Predictor(CONFIG, weights=tmp_path / "named.pth",
                          overrides=[*TINY, f"data.val.ann_file={val}"])
    assert (predictor.category_ids, predictor.class_names) == ([7, 40, 2], ["dog", "emu", "cat"])
    caplog.clear()  # a file that cannot be read is said to be so
    Predictor(CONFIG, weights=tmp_path / "named.pth",
              overrides=[*TINY, f"data.val.ann_file={tmp_path / 'none.json'}"])
    assert any("and data.val.ann_file cannot be read (annotation file not found" in
               r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    caplog.clear()  # a val file of other classes: 1..K, said
    val.write_text(json.dumps({"images": [], "annotations": [], "categories": [
        {"id": 1, "name": "a"}]}))
    predictor = Predictor(CONFIG, weights=tmp_path / "model_0000200.pth",
                          overrides=[*TINY, f"data.val.ann_file={val}"])
    assert predictor.category_ids == [1, 2, 3]
    assert any(f"and data.val.ann_file {val} has 1 categories, not its 3 classes: its classes "
               f"are taken to be ids 1..3" in r.getMessage()
               for r in caplog.records if r.levelno >= logging.WARNING)


def test_bgr_arrays_and_image_paths_give_the_rgb_arrays_detections(
        checkpoint: Path, tmp_path: Path) -> None:
    """detectron2's DefaultPredictor and mmdetection's inference_detector take OpenCV's BGR
    (and mmdetection a path): `input_format="BGR"` and a path give the RGB array's
    detections; a BGR array given as RGB does not."""
    rgb = np.random.default_rng(3).integers(0, 256, (80, 120, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), rgb[..., ::-1])
    bgr = cv2.imread(str(tmp_path / "a.png"))
    rgb_predictor = Predictor(None, weights=checkpoint,
                              overrides=["model.roi_heads.score_thresh=0.0"])
    bgr_predictor = Predictor(None, weights=checkpoint, input_format="BGR",
                              overrides=["model.roi_heads.score_thresh=0.0"])
    expected = rgb_predictor(rgb)
    assert len(expected["boxes"]) > 0
    pairs = [(bgr_predictor(bgr), expected), (rgb_predictor(tmp_path / "a.png"), expected),
             (bgr_predictor(str(tmp_path / "a.png")), expected),
             *zip(bgr_predictor.predict_batch([bgr, tmp_path / "a.png"]),
                  rgb_predictor.predict_batch([rgb, rgb]))]
    for got, wanted in pairs:
        for key in ("boxes", "scores", "labels"):
            np.testing.assert_array_equal(got[key], wanted[key])
    assert not np.array_equal(rgb_predictor(bgr)["scores"], expected["scores"])
    with pytest.raises(ValueError, match="input_format must be one of RGB, BGR, got 'bgr8'"):
        Predictor(None, weights=checkpoint, input_format="bgr8")
    with pytest.raises(UnreadableImageError, match=r"^images\[1\]: .*b.png: file not found$"):
        rgb_predictor.predict_batch([rgb, tmp_path / "b.png"])


def test_score_thresh_set_afterwards_is_the_threshold_given_at_the_start(
        checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Set after construction it is what `model.roi_heads.score_thresh` at construction
    gives, for an exported graph too (which keeps its own NMS: only a higher one is taken)."""
    from resnet_detect.detection.training import export_model
    image = np.random.default_rng(4).integers(0, 256, (80, 120, 3), dtype=np.uint8)
    low = Predictor(None, weights=checkpoint, overrides=["model.roi_heads.score_thresh=0.0"])
    every = low(image)["scores"]
    high = float(np.median(every))  # half the detections stay
    expected = Predictor(None, weights=checkpoint,
                         overrides=[f"model.roi_heads.score_thresh={high}"])(image)
    assert 0 < len(expected["scores"]) < len(every)
    assert low.score_thresh == 0.0
    low.score_thresh = high
    assert low.score_thresh == high
    for key in ("boxes", "scores", "labels"):
        np.testing.assert_array_equal(low(image)[key], expected[key])
    with pytest.raises(ValueError, match=r"score_thresh must be a number in \[0, 1\), got 1.5"):
        low.score_thresh = 1.5
    with pytest.raises(ValueError, match=r"score_thresh must be a number in \[0, 1\), got True"):
        low.score_thresh = True
    low.score_thresh = np.float32(high)  # (a score of its results)
    assert low.score_thresh == pytest.approx(high)
    low.score_thresh = high
    export_model(str(CONFIG), str(checkpoint), tmp_path,
                 [*TINY, "model.roi_heads.score_thresh=0.0"])
    graph = Predictor(None, weights=tmp_path)
    graph.score_thresh = high
    with caplog.at_level(logging.WARNING):
        given = Predictor(None, weights=tmp_path,
                          overrides=[f"model.roi_heads.score_thresh={high}"])
    assert "runs as it was exported" not in caplog.text
    for got in (graph(image), given(image)):
        assert len(got["scores"]) == len(expected["scores"])
        np.testing.assert_allclose(got["boxes"], expected["boxes"], atol=1e-2)
        np.testing.assert_array_equal(got["labels"], expected["labels"])
    assert given.score_thresh == high
    graph.score_thresh = 0.0
    assert len(graph(image)["scores"]) == len(every)
    exported = export_model(str(CONFIG), str(checkpoint), tmp_path / "high",
                            [*TINY, f"model.roi_heads.score_thresh={high}"])
    assert exported is not None
    with pytest.raises(ValueError, match=rf"score_thresh 0.01: .* records the exported graph's "
                                         rf"score threshold {high} .*; export again with "
                                         rf"model.roi_heads.score_thresh=0.01"):
        Predictor(None, weights=tmp_path / "high").score_thresh = 0.01
