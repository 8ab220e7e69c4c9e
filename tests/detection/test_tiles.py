"""Sliced detection of large images (detection.tiles, `test.tiles`): the tile grid, boxes
shifted into the image, passes merged by one per-class NMS, and what refuses tiles."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import onnx
import pytest
import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from resnet_detect.detection import Predictor, paste_masks
from resnet_detect.detection.config import load_config
from resnet_detect.detection.tiles import (Tiles, nms_over_smaller, tile_starts,
                                           tiles_from_config)
from resnet_detect.detection.training import export_model
from resnet_detect.engine.config import ConfigError
from tests.detection.test_tta import CONFIG, EVERY, TINY, _image, tiny_mask_rcnn



@pytest.mark.parametrize("length, tile, overlap, starts", [
    (1000, 512, 0.2, [0, 410, 488]),  # step 512 - int(102.4) = 410; the last flush: 1000 - 512
    (922, 512, 0.2, [0, 410]),        # the second tile ends at 922 already
    (1024, 512, 0.0, [0, 512]),
    (1025, 512, 0.0, [0, 512, 513]),  # one pixel more: a third tile, flush, not padded
    (600, 400, 0.5, [0, 200]),
    (100, 10, 0.25, [0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 90]),
    (512, 512, 0.2, [0]),
    (300, 512, 0.2, [0]),
])
def test_tile_starts(length: int, tile: int, overlap: float, starts: list[int]) -> None:
    assert tile_starts(length, tile, overlap) == starts


def _tiles(size: tuple[int, int], overlap: float = 0.25, full_image: bool = False,
           nms_thresh: float | None = None, match_metric: str = "iou", min_size: int = 64,
           max_size: int | None = None) -> Tiles:
    return Tiles(size=size, overlap=overlap, full_image=full_image, nms_thresh=nms_thresh,
                 match_metric=match_metric, min_size=min_size, max_size=max_size)


def test_the_grid_covers_the_image_row_by_row_and_stays_inside_it() -> None:
    # rows: step 64 - 16 = 48, [0, 36]; columns: step 96 - 24 = 72, [0, 72, 104]
    assert _tiles((64, 96)).grid(100, 200) == [
        (0, 0, 64, 96), (0, 72, 64, 96), (0, 104, 64, 96),
        (36, 0, 64, 96), (36, 72, 64, 96), (36, 104, 64, 96)]
    # a side shorter than the tile is one tile of that side
    assert _tiles((64, 96)).grid(50, 300) == [(0, 0, 50, 96), (0, 72, 50, 96),
                                              (0, 144, 50, 96), (0, 204, 50, 96)]
    assert _tiles((64, 96)).grid(64, 96) == [(0, 0, 64, 96)]
    for height, width in ((517, 333), (4000, 6000), (129, 1000)):
        covered = np.zeros((height, width), bool)
        for y, x, h, w in _tiles((128, 160), overlap=0.2).grid(height, width):
            assert 0 <= y and y + h <= height and 0 <= x and x + w <= width
            covered[y:y + h, x:x + w] = True
        assert covered.all()


class StubDetector(nn.Module):
    """A detector whose outputs are known: each 4-connected blob of bright red (> 127) in an
    input is one detection, its box the blob's pixel extent scaled to the output size, its
    class 1 where the blob is bright green too (else 0), its score area / (area + 100) in
    the input's pixels (a blob seen larger scores higher). Records the inputs' shapes per
    call."""

    mask_on = False
    mask_threshold = 0.5

    def __init__(self, nms_thresh: float = 0.5, detections_per_image: int = 100) -> None:
        super().__init__()
        self.register_buffer("pixel_mean", torch.zeros(3, 1, 1), False)
        self.roi_heads = SimpleNamespace(box_predictor=SimpleNamespace(
            nms_thresh=nms_thresh, detections_per_image=detections_per_image))
        self.calls: list[list[tuple[int, int]]] = []

    def inference(self, images: list[Tensor], output_sizes: list[tuple[int, int]],
                  pasted: bool = True) -> list[dict[str, Tensor]]:
        self.calls.append([tuple(image.shape[-2:]) for image in images])
        out = []
        for image, (out_h, out_w) in zip(images, output_sizes):
            pixels = image.numpy()
            h, w = pixels.shape[-2:]
            count, blobs, stats, _ = cv2.connectedComponentsWithStats(
                (pixels[0] > 127).astype(np.uint8), connectivity=4)
            boxes, scores, labels = [], [], []
            for k in range(1, count):
                x, y, bw, bh, area = stats[k]
                boxes.append([x * out_w / w, y * out_h / h, (x + bw) * out_w / w,
                              (y + bh) * out_h / h])
                scores.append(area / (area + 100))
                labels.append(int(pixels[1][blobs == k].mean() > 127))
            order = torch.from_numpy(np.argsort(scores)[::-1].copy())
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)[order],
                        "scores": torch.tensor(scores, dtype=torch.float32)[order],
                        "labels": torch.tensor(labels, dtype=torch.int64)[order]})
        return out


def _scene(height: int, width: int, *objects: tuple[int, int, int, int, int]) -> np.ndarray:
    """Black, with filled rectangles (x1, y1, x2, y2, class): red, and green too for 1."""
    image = np.zeros((height, width, 3), np.uint8)
    for x1, y1, x2, y2, label in objects:
        image[y1:y2, x1:x2] = (255, 255 * label, 0)
    return image


# a 200 x 300 image in 64 x 64 tiles at overlap 0.25 (steps of 48): rows start at
# 0, 48, 96, 136, columns at 0, 48, 96, 144, 192, 236; tiles are at the test size (64)
ROWS, COLUMNS = [0, 48, 96, 136], [0, 48, 96, 144, 192, 236]


def test_an_object_inside_one_tile_is_found_at_its_image_coordinates() -> None:
    # rows 114-134 lie in the tile row from 96 alone, columns 70-90 in the column from 48
    # alone: only the tile at (y 96, x 48) sees it, at (22, 18, 42, 38) in its pixels
    image = _scene(200, 300, (70, 114, 90, 134, 1))
    stub = StubDetector()
    got = _tiles((64, 64))(stub, image)
    np.testing.assert_array_equal(got["boxes"].numpy(), [[70, 114, 90, 134]])
    assert got["labels"].tolist() == [1]
    assert got["scores"].tolist() == pytest.approx([400 / 500])
    # every tile at the test size, four per call (24 tiles); no whole-image pass
    assert [len(call) for call in stub.calls] == [4] * 6
    assert {shape for call in stub.calls for shape in call} == {(64, 64)}


def test_many_tiles_for_an_image_are_warned_of_once_per_grid(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from resnet_detect.detection import tiles as tiles_module
    monkeypatch.setattr(tiles_module, "MANY_TILES", 20)
    monkeypatch.setattr(tiles_module, "_said_many", set())
    caplog.set_level(logging.WARNING)
    image = _scene(200, 300, (70, 114, 90, 134, 1))
    for _ in range(2):
        _tiles((64, 64))(StubDetector(), image)  # 24 tiles
    _tiles((64, 64))(StubDetector(), image[:100])  # 12: not warned of
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == ["24 tiles of 64x64 px at overlap 0.25 for a 200x300 image: a pass of the "
                      "model each (800 px tiles at 0.2 cut a 4000x6000 photo into 60); "
                      "test.tiles.size and test.tiles.overlap set it"]


def test_an_object_in_the_overlap_of_two_tiles_is_kept_once() -> None:
    # columns 100-110 lie in the tiles from 48 (to 112) and from 96 (to 160): both see it whole
    image = _scene(200, 300, (100, 114, 110, 134, 0), (246, 20, 262, 30, 1))
    got = _tiles((64, 64))(StubDetector(), image)
    # the second object: rows 20-30 in the tile row from 0 (to 64) alone, columns 246-262
    # whole in the column from 236, cut at 256 in the one from 192 (IoU 10 / 16 > 0.5)
    np.testing.assert_array_equal(got["boxes"].numpy(), [[100, 114, 110, 134],
                                                          [246, 20, 262, 30]])
    assert got["labels"].tolist() == [0, 1]
    assert got["scores"].tolist() == pytest.approx([200 / 300, 160 / 260])


def test_the_whole_image_finds_what_no_tile_holds_and_is_merged_with_them() -> None:
    # 250 x 150 px: larger than any tile; at the test size the whole image is 64 x 96
    image = _scene(200, 300, (20, 20, 270, 170, 0))
    stub = StubDetector()
    whole = _tiles((64, 64), full_image=True)(stub, image)
    assert stub.calls[0] == [(64, 96)]  # the whole image first, at the test resize
    tiles_only = _tiles((64, 64))(StubDetector(), image)
    # (80 x 48 px at the test size, each pixel 3.125 image pixels)
    large = [box for box in whole["boxes"].tolist()
             if np.abs(np.subtract(box, [20, 20, 270, 170])).max() <= 4]
    assert len(large) == 1
    assert not any((x2 - x1) > 64 or (y2 - y1) > 64 for x1, y1, x2, y2 in
                   tiles_only["boxes"].tolist())


def test_pieces_cut_by_tile_edges_merge_at_the_iou_of_test_tiles_nms_thresh() -> None:
    # rows 114-134 (tile row from 96 alone); columns 220-245: whole in the column from 192,
    # cut in the one from 236 to [236, 114, 245, 134]: IoU 9 / 25 = 0.36 with the whole box
    image = _scene(200, 300, (220, 114, 245, 134, 0))
    kept = _tiles((64, 64))(StubDetector(nms_thresh=0.5), image)
    np.testing.assert_array_equal(kept["boxes"].numpy(), [[220, 114, 245, 134],
                                                           [236, 114, 245, 134]])
    merged = _tiles((64, 64), nms_thresh=0.3)(StubDetector(nms_thresh=0.5), image)
    np.testing.assert_array_equal(merged["boxes"].numpy(), [[220, 114, 245, 134]])
    # the model's own threshold where test.tiles.nms_thresh is null
    merged = _tiles((64, 64))(StubDetector(nms_thresh=0.3), image)
    np.testing.assert_array_equal(merged["boxes"].numpy(), [[220, 114, 245, 134]])


def test_a_piece_inside_its_whole_box_is_dropped_by_the_intersection_over_the_smaller() -> None:
    # as above: the piece [236, 114, 245, 134] lies inside the whole box, IoU 0.36 but
    # intersection over the smaller (the piece) 1; an object elsewhere stays
    image = _scene(200, 300, (220, 114, 245, 134, 0), (20, 120, 40, 130, 1))
    merged = _tiles((64, 64), match_metric="ios")(StubDetector(nms_thresh=0.5), image)
    np.testing.assert_array_equal(merged["boxes"].numpy(), [[220, 114, 245, 134],
                                                            [20, 120, 40, 130]])


@pytest.mark.parametrize("threshold, expected", [(0.55, [0, 2, 3, 5, 6]),
                                                 (0.5, [0, 3, 4, 5, 6]),
                                                 (0.3, [0, 3, 5, 6])])
def test_nms_over_smaller_against_hand_computed_overlaps(threshold: float,
                                                          expected: list[int]) -> None:
    boxes = torch.tensor([
        [0, 0, 100, 100],   # 0: the best
        [10, 10, 30, 30],   # 1: inside 0 (intersection over the smaller 1; IoU 0.04)
        [90, 0, 110, 10],   # 2: half of it inside 0 (0.5)
        [0, 0, 100, 100],   # 3: as 0, of the other class
        [70, 0, 170, 100],  # 4: 0.3 of it inside 0, and 2 wholly inside it
        [200, 0, 210, 5],   # 5: overlaps nothing
        [0, 0, 0, 50],      # 6: empty, overlaps nothing
    ], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    labels = torch.tensor([0, 0, 0, 1, 0, 0, 0])
    # at 0.55: 2 stays and drops 4; at 0.5 (SAHI's: at the threshold too) 0 drops 2, and 4
    # stays (0.3); at 0.3 0 drops 4 too
    assert nms_over_smaller(boxes, scores, labels, threshold, k=100).tolist() == expected
    assert nms_over_smaller(boxes, scores, labels, threshold, k=2).tolist() == expected[:2]
    assert nms_over_smaller(boxes[:0], scores[:0], labels[:0], threshold, k=5).tolist() == []
    assert nms_over_smaller(boxes, scores, labels, threshold, k=0).tolist() == []


def test_an_image_that_fits_in_a_tile_runs_once_at_the_test_resize() -> None:
    image = _scene(60, 90, (10, 20, 40, 50, 0))
    stub = StubDetector()
    got = _tiles((64, 96), full_image=True)(stub, image)
    assert stub.calls == [[(64, 96)]]  # 60 x 90 resized to a short edge of 64
    assert len(got["boxes"]) == 1


def test_the_best_detections_per_image_are_kept() -> None:
    # 2 x 3 squares of 10 + 2k px in separate exclusive tile regions; keep the 4 largest
    objects = [(x, y, x + 10 + 2 * k, y + 10 + 2 * k, 0)
               for k, (x, y) in enumerate((x, y) for y in (2, 114) for x in (2, 66, 162))]
    image = _scene(200, 300, *objects)
    got = _tiles((64, 64))(StubDetector(detections_per_image=4), image)
    np.testing.assert_array_equal(got["boxes"].numpy(),
                                  [list(o[:4]) for o in objects[::-1][:4]])


# the same detections from a random-weight Mask R-CNN


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_mask_rcnn(tmp_path_factory.mktemp("ckpt"))



@pytest.mark.parametrize("tile", [[96, 128], [200, 128], [300, 300]])
def test_an_image_that_fits_in_a_tile_gives_the_untiled_result(checkpoint: Path,
                                                               tile: list[int]) -> None:
    image = _image(0, (96, 128))
    plain = Predictor(None, weights=checkpoint, overrides=EVERY)(image)
    tiled = Predictor(None, weights=checkpoint, overrides=EVERY + [
        f"test.tiles.size=[{tile[0]},{tile[1]}]", "test.tiles.full_image=true"])(image)
    assert len(plain["boxes"]) > 10
    for key in ("boxes", "scores", "labels", "masks"):
        np.testing.assert_array_equal(tiled[key], plain[key])


def test_tiles_are_each_tiles_prediction_shifted_and_merged_with_the_whole_image(
        checkpoint: Path) -> None:
    # 100 x 150 in 64 x 64 tiles at 0.25: rows [0, 36], columns [0, 48, 86]; 64 px tiles are
    # at the test size, the whole image is resized to 64 x 96. The tiles run four at a time,
    # row by row: batched alike here (a batch's float rounding is not one image's)
    image = _image(1, (100, 150))
    tiled = Predictor(None, weights=checkpoint, overrides=EVERY + [
        "test.tiles.size=[64,64]", "test.tiles.overlap=0.25"])
    model = tiled.model
    offsets = [(y, x) for y in (0, 36) for x in (0, 48, 86)]
    crops = [torch.from_numpy(image[y:y + 64, x:x + 64].transpose(2, 0, 1).copy())
             for y, x in offsets]
    whole = torch.from_numpy(cv2.resize(image, (96, 64), interpolation=cv2.INTER_LINEAR)
                             .transpose(2, 0, 1).copy())
    with torch.no_grad():
        parts = (model.inference([whole], [(100, 150)], pasted=False)
                 + model.inference(crops[:4], [(64, 64)] * 4, pasted=False)
                 + model.inference(crops[4:], [(64, 64)] * 2, pasted=False))
    for (y, x), part in zip(offsets, parts[1:]):
        part["boxes"] = part["boxes"] + torch.tensor([x, y, x, y])
    every = {key: torch.cat([p[key] for p in parts])
             for key in ("boxes", "scores", "labels", "mask_probs")}
    keep = batched_nms(every["boxes"], every["scores"], every["labels"], 0.5)[:100]
    expected = {key: value[keep].numpy() for key, value in every.items()}
    # the box-relative masks pasted at the boxes in the image (not each tile's own pasting
    # shifted: Detectron's pasting truncates the widened box's corners toward zero, which
    # moves by a pixel the masks of boxes at a tile's top or left edge)
    expected["masks"] = paste_masks(every["mask_probs"][keep], every["boxes"][keep],
                                    (100, 150), threshold=model.mask_threshold).numpy()
    got = tiled(image)
    assert len(got["boxes"]) == 100
    np.testing.assert_allclose(got["boxes"], expected["boxes"], atol=1e-4)
    np.testing.assert_allclose(got["scores"], expected["scores"], rtol=1e-6)
    np.testing.assert_array_equal(got["labels"], np.array([2, 7, 40])[expected["labels"]])
    np.testing.assert_array_equal(got["masks"], expected["masks"])
    assert got["masks"].any(axis=(1, 2)).mean() > 0.5
    from_tiles = keep >= len(parts[0]["boxes"])
    assert 0 < int(from_tiles.sum()) < 100  # both the tiles and the whole image are kept
    # the same for an image in a batch, next to one of another size
    both = tiled.predict_batch([image, image[:80]])
    np.testing.assert_array_equal(both[0]["boxes"], got["boxes"])
    np.testing.assert_array_equal(both[1]["boxes"],
                                  tiled(np.ascontiguousarray(image[:80]))["boxes"])


@pytest.mark.parametrize("bad, message", [
    ("test.tiles.size=512", r"test\.tiles\.size must be \[height, width\], two positive "
                            r"integers .*got 512"),
    ("test.tiles.size=[0,64]", r"test\.tiles\.size must be .*got \[0,64\]"),
    ("test.tiles.size=[-64,64]", r"test\.tiles\.size must be .*got \[-64,64\]"),
    ("test.tiles.size=[64,64,3]", r"test\.tiles\.size must be .*got \[64,64,3\]"),
    ("test.tiles.size=[64.5,64]", r"test\.tiles\.size must be .*got \[64\.5,64\]"),
    ("test.tiles.size=[64]", r"test\.tiles\.size must be .*got \[64\]"),
    ("test.tiles.overlap=1", r"test\.tiles\.overlap must be a fraction of a tile in \[0, 1\)"),
    ("test.tiles.overlap=1.5", r"test\.tiles\.overlap must be .*got 1\.5"),
    ("test.tiles.overlap=-0.1", r"test\.tiles\.overlap must be .*got -0\.1"),
    ("test.tiles.overlap=true", r"test\.tiles\.overlap must be .*got True"),
    ("test.tiles.full_image=1", r"test\.tiles\.full_image must be true or false"),
    ("test.tiles.nms_thresh=0", r"test\.tiles\.nms_thresh must be an overlap in \(0, 1\]"),
    ("test.tiles.match_metric=iomin", r"test\.tiles\.match_metric must be iou or ios .*got "
                                      r"iomin"),
    ("test.tiles.nms_thresh=1.2", r"test\.tiles\.nms_thresh must be"),
    ("test.flip=true", r"test\.tiles\.size=\[64,64\] does not combine with test-time "
                       r"augmentation \(test\.flip=true\): add test\.flip=false, or "
                       r"test\.tiles\.size=null$"),
    ("test.min_sizes=[48,64]", r"does not combine .*\(test\.min_sizes=\[48,64\]\): add "
                               r"test\.min_sizes=null, or"),
])
def test_bad_tile_settings_are_refused_naming_the_key(checkpoint: Path, bad: str,
                                                      message: str) -> None:
    overrides = TINY + ["test.tiles.size=[64,64]", bad]
    with pytest.raises(ConfigError, match=message):
        tiles_from_config(load_config(CONFIG, overrides))
    with pytest.raises(ConfigError, match=message):
        Predictor(None, weights=checkpoint, overrides=overrides[len(TINY):])


def test_no_tiles_by_default_and_the_keys_are_read() -> None:
    assert tiles_from_config(load_config(CONFIG, TINY)) is None
    tiles = tiles_from_config(load_config(CONFIG, TINY + [
        "test.tiles.size=[512,640]", "test.tiles.overlap=0", "test.tiles.full_image=false",
        "test.tiles.nms_thresh=0.25", "test.tiles.match_metric=ios"]))
    assert tiles == Tiles(size=(512, 640), overlap=0.0, full_image=False, nms_thresh=0.25,
                          match_metric="ios", min_size=64, max_size=200)
    assert tiles_from_config(load_config(CONFIG, TINY + ["test.tiles.size=[8,8]"])) == Tiles(
        size=(8, 8), overlap=0.2, full_image=True, nms_thresh=None, match_metric="iou",
        min_size=64, max_size=200)


def test_an_export_with_tiles_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"an exported graph runs the whole image once; the "
                                          r"config asks for tiles \(test\.tiles\.size="
                                          r"\[64,64\]\): add test\.tiles\.size=null"):
        export_model(None, str(checkpoint), tmp_path / "onnx",
                     overrides=["test.tiles.size=[64,64]"])
    assert not (tmp_path / "onnx").exists()


def test_an_exported_graph_of_box_masks_takes_tiles_as_the_weights_do(
        checkpoint: Path, tmp_path: Path) -> None:
    export_model(None, str(checkpoint), tmp_path / "box", overrides=EVERY, mask_output="box")
    tiles = ["test.tiles.size=[64,64]", "test.tiles.overlap=0.25"]
    image = _image(1, (100, 150))
    graph = Predictor(None, weights=tmp_path / "box/model.onnx", overrides=EVERY + tiles)(image)
    weights = Predictor(None, weights=checkpoint, overrides=EVERY + tiles)(image)
    assert len(graph["boxes"]) == len(weights["boxes"]) == 100
    # ONNX Runtime's float rounding is not PyTorch's: the same boxes, in score order
    np.testing.assert_allclose(graph["boxes"], weights["boxes"], atol=1e-3)
    np.testing.assert_allclose(graph["scores"], weights["scores"], atol=1e-5)
    np.testing.assert_array_equal(graph["labels"], weights["labels"])
    assert (graph["masks"] != weights["masks"]).mean() < 1e-3
    untiled = Predictor(None, weights=tmp_path / "box/model.onnx", overrides=EVERY)(image)
    assert not np.array_equal(untiled["boxes"], graph["boxes"])
    # an older export, without the NMS threshold the merging takes
    graph_file = tmp_path / "box/model.onnx"
    proto = onnx.load(str(graph_file))
    meta = json.loads(proto.metadata_props[0].value)
    del meta["nms_thresh"]
    proto.metadata_props[0].value = json.dumps(meta)
    onnx.save(proto, str(graph_file))
    (tmp_path / "box/export.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"test\.tiles\.size=\[64,64\]: .*model\.onnx's own "
                                          r"metadata does not record the graph's nms_thresh, "
                                          r".*set test\.tiles\.nms_thresh"):
        Predictor(None, weights=tmp_path / "box/model.onnx", overrides=tiles)
    named = Predictor(None, weights=tmp_path / "box/model.onnx",
                      overrides=EVERY + tiles + ["test.tiles.nms_thresh=0.5"])(image)
    np.testing.assert_array_equal(named["boxes"], graph["boxes"])
    # a graph cut short (a copy that stopped): named, and what to do
    data = graph_file.read_bytes()
    graph_file.write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(ValueError, match=r"ONNX Runtime cannot load .*box/model\.onnx: .*a "
                                         r"damaged or cut file: export it again"):
        Predictor(None, weights=graph_file, overrides=EVERY)


def test_tiles_with_a_graph_that_pastes_its_masks_are_refused(checkpoint: Path,
                                                              tmp_path: Path) -> None:
    export_model(None, str(checkpoint), tmp_path / "pasted", mask_output="pasted")
    with pytest.raises(ConfigError, match=r"test\.tiles\.size=\[64,64\]: the exported graph "
                                          r".*pastes its masks into its input; .* export with "
                                          r"tools/export\.py --mask-output box"):
        Predictor(None, weights=tmp_path / "pasted/model.onnx",
                  overrides=["test.tiles.size=[64,64]"])


@pytest.mark.parametrize("what", ["tiles", "views"])
def test_the_evaluation_encodes_tiled_or_viewed_masks_from_their_boxes(
        checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str) -> None:
    """tools/eval.py's loop: the Predictor's masks (pasted whole) encoded by pycocotools, bit
    for bit, without a full-size mask (a large photo's tiles are why tiles exist)."""
    from pycocotools import mask as mask_utils

    from resnet_detect.detection import tiles as tiles_module
    from resnet_detect.detection import tta as tta_module
    from resnet_detect.detection.evaluation import COCOEvaluator
    from resnet_detect.detection.training import evaluate_all

    settings = {"tiles": ["test.tiles.size=[64,64]", "test.tiles.overlap=0.25"],
                "views": ["test.min_sizes=[48,64]", "test.flip=true"]}[what]
    predictor = Predictor(None, weights=checkpoint, overrides=EVERY + settings)
    image = _image(1, (100, 150))
    expected = predictor(image)
    assert len(expected["masks"]) == 100 and expected["masks"].any(axis=(1, 2)).mean() > 0.5
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 150}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [10, 10, 50, 50],
                         "area": 2500.0, "iscrowd": 0,
                         "segmentation": [[10, 10, 60, 10, 60, 60, 10, 60]]}],
        "categories": [{"id": c, "name": f"c{c}"} for c in predictor.category_ids]}))
    for module in (tiles_module, tta_module):
        monkeypatch.setattr(module, "paste_masks", None)  # called, it fails
    evaluator = COCOEvaluator(gt_file, category_ids=predictor.category_ids,
                              iou_types=("bbox", "segm"), output_dir=tmp_path / "out")
    batch = [{"image": torch.from_numpy(image.transpose(2, 0, 1).copy()), "image_id": 1,
              "height": 100, "width": 150}]
    evaluate_all(predictor.model, [batch], evaluator, predictor.tiles or predictor.tta)
    written = json.loads((tmp_path / "out/coco_instances_results.json").read_text())
    assert len(written) == 100
    for result, mask in zip(written, expected["masks"], strict=True):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert result["segmentation"]["counts"] == rle["counts"].decode("ascii")
