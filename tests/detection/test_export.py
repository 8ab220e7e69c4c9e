"""ONNX export of Faster R-CNN (FPN, C4, DC5) and Mask R-CNN: ONNX Runtime, on image sizes and
aspect ratios other than the one exported with, gives the PyTorch detections."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from resnet_detect.detection.build import build_model
from resnet_detect.detection.config import load_config
from resnet_detect.detection.export import MASK_OUTPUTS, ExportError, OnnxDetector, export_detector
from resnet_detect.detection.rcnn import GeneralizedRCNN

ROOT = Path(__file__).resolve().parents[2]
EXPORT_SIZE = (96, 128)
SIZES = [(77, 141), (150, 90), (64, 200)]  # (h, w) fed to the graph, none the export size
CATEGORY_IDS = [1, 5, 7]


def build(config: str, *overrides: str) -> GeneralizedRCNN:
    cfg = load_config(ROOT / config, ["model.num_classes=3", "model.backbone.weights=null",
                                      "model.weights=null", "model.backbone.name=resnet18",
                                      "model.rpn.post_nms_topk_test=100",
                                      "model.fpn.out_channels=64",
                                      "model.roi_heads.fc_dims=[64,64]", *overrides])
    torch.manual_seed(0)
    return build_model(cfg).eval()


def export(model: GeneralizedRCNN, folder: Path, mask_output: str | None = None,
           category_ids: list[int] = CATEGORY_IDS) -> OnnxDetector:
    export_detector(model, folder, class_names=["a", "b", "c"], category_ids=category_ids,
                    resize=(96, 160), example_size=EXPORT_SIZE, mask_output=mask_output)
    return OnnxDetector(folder)


@pytest.mark.parametrize("config, extra", [
    ("configs/detection/faster_rcnn_R_50_FPN_1x.yaml", []),
    ("configs/detection/faster_rcnn_R_50_C4_1x.yaml", ["model.rpn.post_nms_topk_test=30"]),
    ("configs/detection/faster_rcnn_R_50_DC5_1x.yaml", ["model.backbone.multi_grid=[1,1]"]),
    ("configs/synthetic/mask_rcnn_R_18_FPN.yaml", ["model.roi_heads.mask_conv_dims=[16,16]"]),
], ids=["fpn", "c4", "dc5", "mask_rcnn"])
def test_onnx_runtime_gives_the_pytorch_detections_at_any_size(config: str, extra: list[str],
                                                               tmp_path: Path) -> None:
    # random weights score low: keep every candidate so that there are detections to compare
    model = build(config, "model.roi_heads.score_thresh=0.0", *extra)
    onnx_model = export(model, tmp_path)
    generator = torch.Generator().manual_seed(0)
    for h, w in SIZES:
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)
        original = (2 * h + 1, 2 * w - 3)  # the image before test-time resizing
        with torch.no_grad():
            expected = model([image], output_sizes=[original])[0]
        got = onnx_model([image], output_sizes=[original])[0]
        assert len(expected["boxes"]) >= 30 and len(got["boxes"]) == len(expected["boxes"])
        torch.testing.assert_close(got["boxes"], expected["boxes"], atol=0.01, rtol=0)
        torch.testing.assert_close(got["scores"], expected["scores"], atol=1e-4, rtol=0)
        assert torch.equal(got["labels"], expected["labels"])
        if model.mask_on:
            assert got["masks"].shape == expected["masks"].shape == (len(got["boxes"]), *original)
            assert expected["masks"].any()
            assert_same_masks(got["masks"], expected["masks"])
    # the graph itself labels with the dataset's category ids
    raw = onnx_model.session.run(None, {"image": np.zeros((80, 100, 3), np.uint8),
                                        "original_size": np.array([80, 100])})
    assert set(raw[2].tolist()) <= set(CATEGORY_IDS) and len(raw[2]) >= 30


def proposal_count(model: GeneralizedRCNN, image: torch.Tensor) -> int:
    with torch.no_grad():
        batch, sizes = model.preprocess([image])
        proposals, _ = model.rpn(model.backbone(batch), sizes, tuple(batch.shape[-2:]), None)
    return len(proposals[0]["boxes"])


def same_detections(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
                    ) -> torch.Tensor:
    """For each row of `got`, the row of `expected` with its label, its score (1e-4) and its
    box (0.01 px), each used once (rows of equal score may come in either order)."""
    near = ((got["boxes"][:, None] - expected["boxes"][None]).abs().amax(dim=2) <= 0.01) & (
        (got["scores"][:, None] - expected["scores"][None]).abs() <= 1e-4) & (
        got["labels"][:, None] == expected["labels"][None])
    order, used = [], set()
    for i, candidates in enumerate(near):
        free = [j for j in candidates.nonzero().flatten().tolist() if j not in used]
        assert free, f"detection {i} of the graph has no counterpart: {got['boxes'][i]}"
        order.append(free[0])
        used.add(free[0])
    return torch.tensor(order)


def assert_same_masks(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Mask by mask: rounding at the 0.5 threshold flips a pixel of a few masks in a thousand;
    a paste half a pixel off changed some 40 % of every mask's pixels."""
    wrong = (got != expected).sum(dim=(1, 2))
    area = (got | expected).sum(dim=(1, 2))
    assert (wrong <= (0.01 * area).clamp(min=1)).all(), (wrong, area)


@pytest.mark.parametrize("config, extra", [
    ("configs/detection/faster_rcnn_R_50_FPN_1x.yaml", ["model.rpn.score_thresh=0.01"]),
    ("configs/synthetic/mask_rcnn_R_18_FPN.yaml", ["model.roi_heads.mask_conv_dims=[16,16]"]),
], ids=["fpn", "mask_rcnn"])
def test_the_graph_follows_the_number_of_proposals_and_detections(config: str, extra: list[str],
                                                                  tmp_path: Path) -> None:
    """Neither count capped: every image has its own number of proposals (the box pooler's
    rows) and of detections (the mask pooler's), none the export example's."""
    model = build(config, "model.rpn.post_nms_topk_test=5000", "model.roi_heads.score_thresh=0.0",
                  "model.roi_heads.detections_per_image=5000", *extra)
    onnx_model = export(model, tmp_path)
    example = torch.zeros((3, *EXPORT_SIZE), dtype=torch.uint8)
    with torch.no_grad():
        exported = (proposal_count(model, example), len(model([example])[0]["boxes"]))
    counts = []
    generator = torch.Generator().manual_seed(1)
    for h, w in [(40, 56), (77, 141), (150, 90), (112, 208)]:
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)
        with torch.no_grad():
            expected = model([image])[0]
        counts.append((proposal_count(model, image), len(expected["boxes"])))
        got = onnx_model([image])[0]
        assert len(got["boxes"]) == len(expected["boxes"])
        torch.testing.assert_close(got["scores"], expected["scores"], atol=1e-4, rtol=0)
        order = same_detections(got, expected)  # hundreds of random-weight scores: some tie
        if model.mask_on:
            assert_same_masks(got["masks"], expected["masks"][order])
    assert all(p != exported[0] and d != exported[1] for p, d in counts), (exported, counts)


@pytest.mark.parametrize("mask_output", MASK_OUTPUTS)
def test_one_detection_at_export_leaves_the_count_free(mask_output: str, tmp_path: Path) -> None:
    """A trial's Mask R-CNN found exactly one detection on the export's blank example: the
    mask pooler's graph kept one RoI (a Reshape to (C, S, S)) and every image with another
    count failed in ONNX Runtime, though the export had said it was written."""
    model = build("configs/synthetic/mask_rcnn_R_18_FPN.yaml", "model.roi_heads.score_thresh=0.0",
                  "model.roi_heads.mask_conv_dims=[16]")
    example = torch.zeros((3, *EXPORT_SIZE), dtype=torch.uint8)
    with torch.no_grad():
        scores = model([example])[0]["scores"]
    predictor = model.roi_heads.box_predictor  # between the best two: one detection there
    predictor.score_thresh = float(scores[:2].mean())
    with torch.no_grad():
        assert len(model([example])[0]["boxes"]) == 1
    onnx_model = export(model, tmp_path, mask_output)
    # (random weights: near-blank images are the ones scoring as high as the example)
    for h, w, grey in [(150, 90, 0), (120, 160, 0), (120, 160, 2)]:
        image = torch.full((3, h, w), grey, dtype=torch.uint8)
        with torch.no_grad():
            expected = model([image])[0]
        got = onnx_model([image])[0]
        assert len(expected["boxes"]) >= 2 and len(got["boxes"]) == len(expected["boxes"])
        torch.testing.assert_close(got["scores"], expected["scores"], atol=1e-4, rtol=0)
        assert_same_masks(got["masks"], expected["masks"][same_detections(got, expected)])


def test_category_ids_of_any_size_map_back_to_the_models_labels(tmp_path: Path) -> None:
    """A trial's dataset numbered its categories from 2**33: loading the export asked for a
    table of 2**33 labels (64 GB) and every tool using it stopped."""
    model = build("configs/detection/faster_rcnn_R_50_FPN_1x.yaml",
                  "model.roi_heads.score_thresh=0.0")
    onnx_model = export(model, tmp_path, category_ids=[2**40, 7, 2**33 + 5])
    image = torch.randint(0, 256, (3, 77, 141), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model([image])[0]
    got = onnx_model([image])[0]
    assert set(expected["labels"].tolist()) == {0, 1, 2}
    assert torch.equal(got["labels"], expected["labels"])
    _, _, ids = onnx_model.session.run(None, {"image": np.full((70, 90, 3), 128, np.uint8),
                                              "original_size": np.array([70, 90])})[:3]
    assert len(ids) and set(ids.tolist()) <= {2**40, 7, 2**33 + 5}


def test_an_image_without_proposals_gives_empty_outputs(tmp_path: Path) -> None:
    """Every proposal of a 2 x 2 image is under the RPN's 3 px minimum: nothing reaches the
    box head, in PyTorch as in the graph (exported from an image with proposals)."""
    model = build("configs/synthetic/mask_rcnn_R_18_FPN.yaml", "model.rpn.min_box_size=3",
                  "model.roi_heads.score_thresh=0.0", "model.roi_heads.mask_conv_dims=[16]")
    onnx_model = export(model, tmp_path)
    image = torch.full((3, 2, 2), 100, dtype=torch.uint8)
    assert proposal_count(model, image) == 0
    with torch.no_grad():
        expected = model([image])[0]
    got = onnx_model([image])[0]
    for out in expected, got:
        assert out["boxes"].shape == (0, 4) and out["scores"].shape == out["labels"].shape == (0,)
        assert out["masks"].shape == (0, 2, 2)


def test_an_image_without_detections_gives_empty_outputs(tmp_path: Path) -> None:
    model = build("configs/synthetic/mask_rcnn_R_18_FPN.yaml", "model.roi_heads.score_thresh=1.0",
                  "model.roi_heads.mask_conv_dims=[16]")
    onnx_model = export(model, tmp_path)
    boxes, scores, labels, masks = onnx_model.session.run(
        None, {"image": np.full((70, 90, 3), 128, np.uint8), "original_size": np.array([140, 180])})
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)
    assert masks.shape == (0, 140, 180) and masks.dtype == bool


def readme_box_paste() -> str:
    """README's torch-free paste of `--mask-output box` masks."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```python\nboxes, scores, labels, mask_probs = session.run(")
    return text[start + len("```python\n"):text.index("```", start + 3)]


def test_box_masks_are_pasted_as_pytorch_pastes_them(tmp_path: Path) -> None:
    """mask_output="box": the graph gives each box's 28 x 28 probabilities, OnnxDetector pastes
    them into the PyTorch model's masks, and README's OpenCV paste comes within a pixel of the
    edges."""
    model = build("configs/synthetic/mask_rcnn_R_18_FPN.yaml", "model.roi_heads.score_thresh=0.0",
                  "model.roi_heads.mask_conv_dims=[16,16]")
    onnx_model = export(model, tmp_path, mask_output="box")
    assert onnx_model.metadata["mask_output"] == "box"
    assert "mask_probs" in onnx_model.metadata["outputs"]
    meta = onnx_model.metadata  # as the classifiers' and segmenters' export.json
    assert meta["num_classes"] == len(meta["class_names"]) == model.roi_heads.num_classes
    assert meta["pixel_std"] == [58.395, 57.12, 57.375]  # not float32's 58.39500045776367
    assert [o.name for o in onnx_model.session.get_outputs()][3] == "mask_probs"
    generator = torch.Generator().manual_seed(0)
    for h, w in SIZES:
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)
        original = (2 * h + 1, 2 * w - 3)
        with torch.no_grad():
            expected = model([image], output_sizes=[original])[0]
        feed = {"image": np.ascontiguousarray(image.permute(1, 2, 0).numpy()),
                "original_size": np.array(original, dtype=np.int64)}
        probs = onnx_model.session.run(None, feed)[3]
        assert probs.shape == (len(expected["boxes"]), 28, 28) and probs.dtype == np.float32
        np.testing.assert_allclose(probs, expected["mask_probs"].numpy(), atol=1e-5, rtol=0)
        got = onnx_model([image], output_sizes=[original])[0]
        assert expected["masks"].any() and got["masks"].shape == expected["masks"].shape
        assert_same_masks(got["masks"], expected["masks"])
        scope = {"np": np, "cv2": pytest.importorskip("cv2"), "session": onnx_model.session,
                 "resized": feed["image"], "original_size": feed["original_size"],
                 "h": original[0], "w": original[1], "meta": onnx_model.metadata}
        exec(readme_box_paste(), scope)
        edges = expected["masks"].numpy() ^ scope["masks"]
        # OpenCV's bilinear arithmetic may round a pixel at the threshold the other way: on
        # an edge of a mask, and few
        assert edges.sum() <= 0.01 * expected["masks"].sum()
        grown = torch.nn.functional.max_pool2d(expected["masks"][:, None].float(), 3, 1, 1)[:, 0]
        shrunk = -torch.nn.functional.max_pool2d(-expected["masks"][:, None].float(), 3, 1, 1)[:, 0]
        assert not (edges & ((grown == shrunk).numpy())).any()
    # an image without detections
    empty = build("configs/synthetic/mask_rcnn_R_18_FPN.yaml", "model.roi_heads.score_thresh=1.0",
                  "model.roi_heads.mask_conv_dims=[16]")
    none = export(empty, tmp_path / "empty", mask_output="box")
    got = none([torch.full((3, 70, 90), 128, dtype=torch.uint8)], output_sizes=[(140, 180)])[0]
    assert got["masks"].shape == (0, 140, 180) and got["masks"].dtype == torch.bool


def test_the_graphs_outputs_say_their_sizes(tmp_path: Path) -> None:
    """What a deployment reads from the graph (Netron, TensorRT, ONNX Runtime's
    get_outputs()): a box's 4 coordinates and a mask's 28 x 28 (were names the exporter made
    up, "Mulboxes_dim_1"), and one name for the detections' number in every output."""
    import onnx
    mask = build("configs/synthetic/mask_rcnn_R_18_FPN.yaml", "model.roi_heads.mask_conv_dims=[16]")
    shapes = {}
    for mask_output in ("box", "pasted"):
        export(mask, tmp_path / mask_output, mask_output=mask_output)
        graph = onnx.load(str(tmp_path / mask_output / "model.onnx")).graph
        shapes[mask_output] = {o.name: [d.dim_param or d.dim_value for d in
                                        o.type.tensor_type.shape.dim] for o in graph.output}
        assert [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim
                ] == ["height", "width", 3]
    assert shapes["box"] == {"boxes": ["detections", 4], "scores": ["detections"],
                             "labels": ["detections"], "mask_probs": ["detections", 28, 28]}
    assert shapes["pasted"]["masks"] == ["detections", "original_height", "original_width"]


def test_mask_output_is_checked(tmp_path: Path) -> None:
    """Either choice on a Faster R-CNN is refused ("pasted" was taken without a word)."""
    faster = build("configs/detection/faster_rcnn_R_50_FPN_1x.yaml")
    for choice in MASK_OUTPUTS:
        with pytest.raises(ExportError, match=rf"mask_output='{choice}' \(tools/export.py "
                                              r"--mask-output\) is for Mask R-CNN .*this "
                                              r"detector has no masks"):
            export(faster, tmp_path, mask_output=choice)
    mask = build("configs/synthetic/mask_rcnn_R_18_FPN.yaml", "model.roi_heads.mask_conv_dims=[16]")
    with pytest.raises(ExportError, match=r"must be one of pasted, box, got 'rle'"):
        export(mask, tmp_path, mask_output="rle")
    assert not (tmp_path / "model.onnx").exists()


class _Session:
    """Stands in for an ONNX Runtime session that gives these outputs."""

    def __init__(self, boxes: np.ndarray, probs: np.ndarray) -> None:
        self.outputs = [boxes, np.ones(len(boxes), np.float32), np.ones(len(boxes), np.int64),
                        probs]

    def run(self, names: object, feed: object) -> list[np.ndarray]:
        return self.outputs


def test_readmes_box_paste_gives_paste_masks_corners_and_edges() -> None:
    """Boxes whose widened corners float32 rounding puts on the other side of an integer (a
    whole edge line one pixel off when computed in another order), boxes at the image's edges
    and corners, tiny and empty boxes, and random ones."""
    from resnet_detect.detection import paste_masks
    h, w = 90, 120
    rng = np.random.default_rng(0)
    xy = rng.uniform(-5, 125, (3000, 2)).astype(np.float32)
    size = rng.uniform(0, 60, (3000, 2)).astype(np.float32)
    boxes = np.concatenate([
        np.array([[1.125, 1.125, 60.625, 60.625], [0, 0, 120, 90], [0, 0, 3, 3],
                  [117, 87, 120, 90], [50, 40, 50, 40], [50.2, 40.7, 50.9, 41.1],
                  [-3, -3, 10, 10], [110, 80, 130, 95]], np.float32),
        np.concatenate([np.clip(xy, 0, [w, h]), np.clip(xy + size, 0, [w, h])], axis=1)])
    for probs in (np.ones((len(boxes), 28, 28), np.float32),
                  rng.uniform(0, 1, (len(boxes), 28, 28)).astype(np.float32)):
        scope = {"np": np, "cv2": pytest.importorskip("cv2"),
                 "session": _Session(boxes, probs), "resized": None, "original_size": None,
                 "h": h, "w": w, "meta": {"mask_threshold": 0.5}}
        exec(readme_box_paste(), scope)
        expected = paste_masks(torch.from_numpy(probs), torch.from_numpy(boxes), (h, w),
                               threshold=0.5).numpy()
        wrong = (scope["masks"] != expected).sum(axis=(1, 2))
        if (probs == 1).all():  # every edge where the box puts it
            assert (wrong == 0).all(), (np.flatnonzero(wrong)[:5], wrong.max())
        else:  # OpenCV's arithmetic may round a pixel at the threshold the other way
            assert (wrong == 0).mean() > 0.99 and (wrong <= 2).all(), (wrong.max(), wrong.sum())


@pytest.mark.parametrize("min_size", [0, -5, [480, 0]])
def test_a_test_size_of_no_pixels_is_refused_naming_the_key(min_size: object) -> None:
    """data.val.min_size=0 exported a graph that said short_side 0: a deployer's resize
    turned every image into one row of pixels."""
    from resnet_detect.detection.config import test_resize
    from resnet_detect.engine.config import ConfigError
    with pytest.raises(ConfigError, match="data.val.min_size must be positive integers"):
        test_resize({"data": {"val": {"min_size": min_size, "max_size": 1333}}})
    assert test_resize({"data": {"val": {"min_size": [640, 800], "max_size": 0}}}) == (800, None)


def test_an_export_below_the_default_threshold_keeps_it_without_a_config(tmp_path: Path) -> None:
    """Loaded without a config, an export made at score_thresh 0.0 was filtered at the
    default 0.05 without a word (the default counted as asked for)."""
    from resnet_detect.detection import Predictor
    export(build("configs/detection/faster_rcnn_R_50_FPN_1x.yaml",
                 "model.roi_heads.score_thresh=0.0"), tmp_path)
    assert Predictor(None, weights=tmp_path).score_thresh == 0.0
    raised = Predictor(None, weights=tmp_path, overrides=["model.roi_heads.score_thresh=0.3"])
    assert raised.score_thresh == 0.3
