"""tools/demo.py's inputs and output names (engine.visualize)."""
import logging
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from resnet_detect.engine import visualize
from resnet_detect.engine.files import UnwritableFolderError
from resnet_detect.engine.visualize import (draw_detections, draw_segmentation, drawable_name,
                                            expand_inputs, output_paths, palette, run_video)


def test_every_input_gets_its_own_picture(tmp_path: Path) -> None:
    """Folders keep their inner paths; names that would repeat get -2, -3 (before: one
    picture overwrote the others and the count of files written said otherwise)."""
    for name in ["cam1/img.jpg", "cam2/img.jpg", "cam2/img.jpeg", "cam2/img.PNG", "a.mp4",
                 "notes.txt", "other/img.jpg", "cam2/._img.jpg", "cam2/.thumbs/img.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    inputs = list(expand_inputs([str(tmp_path / "cam1"), str(tmp_path / "cam2"),
                                 str(tmp_path / "other/img.jpg"), str(tmp_path / "a.mp4")]))
    assert [(p.relative_to(tmp_path).as_posix(), n.as_posix()) for p, n in inputs] == [
        ("cam1/img.jpg", "img.jpg"), ("cam2/img.PNG", "img.PNG"), ("cam2/img.jpeg", "img.jpeg"),
        ("cam2/img.jpg", "img.jpg"), ("other/img.jpg", "img.jpg"), ("a.mp4", "a.mp4")]
    out = tmp_path / "out"
    assert [p.relative_to(out).as_posix() for p in output_paths(inputs, out)] == [
        "img.jpg", "img.png", "img-2.jpg", "img-3.jpg", "img-4.jpg", "a.mp4"]
    # tools/demo.py's: img.json beside img.jpg and img.png would be one file
    assert [p.relative_to(out).as_posix() for p in output_paths(inputs, out, unique_stems=True)
            ] == ["img.jpg", "img-2.png", "img-3.jpg", "img-4.jpg", "img-5.jpg", "a.mp4"]
    nested = list(expand_inputs([str(tmp_path)]))
    names = [p.relative_to(out).as_posix() for p in output_paths(nested, out)]
    assert "cam1/img.jpg" in names and "cam2/img.jpg" in names and "cam2/img-2.jpg" in names
    assert len(set(names)) == len(names) == 6
    cam2 = list(expand_inputs([str(tmp_path / "cam2")]))
    in_place = output_paths(cam2, tmp_path / "cam2")  # the inputs are never written over
    # (img.png was img.PNG on macOS's and Windows' file systems: the photo drawn over)
    assert [p.relative_to(tmp_path).as_posix() for p in in_place] == [
        "cam2/img-2.png", "cam2/img-2.jpg", "cam2/img-3.jpg"]
    # X.JPG and x.jpeg: one file there
    (tmp_path / "cam3").mkdir()
    (tmp_path / "cam3/X.JPG").write_bytes(b"")
    (tmp_path / "cam3/x.jpeg").write_bytes(b"")
    assert [p.name for p in output_paths(list(expand_inputs([str(tmp_path / "cam3")])),
                                         out)] == ["X.jpg", "x-2.jpg"]
    with pytest.raises(FileNotFoundError, match="input not found: .*missing.jpg"):
        list(expand_inputs([str(tmp_path / "missing.jpg")]))
    # the output folder one of the input folders: a rerun drew the drawn pictures again
    with pytest.raises(UnwritableFolderError, match=r"--output .*cam2 is the input folder "
                                                    r".*cam2: a rerun would draw the pictures "
                                                    r"written there again"):
        list(expand_inputs([str(tmp_path / "cam1"), str(tmp_path / "cam2")], tmp_path / "cam2"))
    assert len(list(expand_inputs([str(tmp_path / "cam2/img.jpg")], tmp_path / "cam2"))) == 1


def test_only_a_segmentations_video_maps_move_a_video_off_a_folders_name(tmp_path: Path) -> None:
    """clip.mp4 beside ffmpeg's clip/000000.png: a segmentation's frame maps of the video
    (predictions/clip/) met the image's (predictions/clip/000000.png); a detection's outputs
    (clip.jsonl, clip/000000.json) meet nothing and keep their names, as a.jpg beside a/."""
    for name in ["a.jpg", "a/b.jpg", "clip.mp4", "clip/000000.png", "predictions/p.jpg",
                 "predictions-2.mp4"]:
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"")
    inputs = list(expand_inputs([str(tmp_path / "in")]))
    out = tmp_path / "out"

    def names(**options: object) -> list[str]:
        return [p.relative_to(out).as_posix() for p in output_paths(inputs, out, **options)]

    assert names(unique_stems=True) == ["a/b.jpg", "a.jpg", "clip/000000.png", "clip.mp4",
                                        "predictions/p.jpg", "predictions-2.mp4"]
    assert names(unique_stems=True, reserved=["predictions"], video_folders=True) == [
        "a/b.jpg", "a.jpg", "clip/000000.png", "clip-2.mp4", "predictions-2/p.jpg",
        "predictions-2-2.mp4"]


def test_a_folder_without_images_beside_other_inputs_is_said(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """It was left out without a word (alone, the tool stops: nothing to draw)."""
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans/page.pdf").write_bytes(b"")
    (tmp_path / "a.jpg").write_bytes(b"")
    with caplog.at_level("WARNING"):
        inputs = list(expand_inputs([str(tmp_path / "scans"), str(tmp_path / "a.jpg")]))
    assert [p.name for p, _ in inputs] == ["a.jpg"]
    assert caplog.records[0].getMessage().startswith(
        f"{tmp_path / 'scans'} holds no images or videos (.3g2 .3gp .asf .avi .bmp")
    # files left out of a folder are counted (they were left out silently)
    for name in ("b.jpg", "anim.gif", "notes.txt", "LICENSE", "c.GIF"):
        (tmp_path / "mixed" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "mixed" / name).write_bytes(b"")
    caplog.clear()
    with caplog.at_level("INFO"):
        assert [p.name for p, _ in expand_inputs([str(tmp_path / "mixed")])] == ["b.jpg"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'mixed'}: left out 4 files that are no images or videos by their suffix "
        "((none) .gif .txt)"]


def test_tags_stay_inside_the_picture_and_legends_have_a_dark_backing() -> None:
    """A tag of a box at the right edge was cut off; white legend names were unreadable on
    light images."""
    image = np.full((60, 100, 3), 200, dtype=np.uint8)
    det = {"boxes": np.array([[85.0, 30.0, 99.0, 50.0]]), "scores": np.array([0.9]),
           "labels": np.array([1]), "class_names": ["triangle"]}
    picture = draw_detections(image, det, {1: (255, 0, 0)}, min_score=0.5)
    tag = (picture[:30] == (255, 0, 0)).all(axis=-1)
    assert tag.any() and np.flatnonzero(tag.any(axis=0)).min() < 85  # moved left to fit
    mask = np.zeros((60, 100), dtype=np.uint8)
    mask[40:, 60:] = 1
    overlay = draw_segmentation(image, mask, ["background", "thing"],
                                np.array([[0, 0, 0], [0, 255, 0]], dtype=np.uint8))
    assert (overlay[3, 3] == 200 // 3).all()  # the backing, above the first swatch
    assert (overlay[30, 90] == 200).all()  # the image elsewhere as it was
    assert (overlay[50, 80] == [100, 227, 100]).all()  # the thing, half green
    # class 0 not named background (ADE20K's wall, Cityscapes' road) is a class like any
    walls = draw_segmentation(image, mask, ["wall", "thing"],
                              np.array([[0, 0, 255], [0, 255, 0]], dtype=np.uint8))
    assert (walls[55, 10] == [100, 100, 227]).all() and (walls[50, 80] == [100, 227, 100]).all()
    # the legend's backing: two rows (to row 39) over the coloured wall; one over background
    assert (walls[30, 3] == [100 // 3, 100 // 3, 227 // 3]).all()
    assert (overlay[30, 3] == 200).all()
    unnamed = draw_segmentation(image, mask, ["class_0", "class_1"],  # placeholders: as before
                                np.array([[0, 0, 255], [0, 255, 0]], dtype=np.uint8))
    assert (unnamed[55, 10] == 200).all() and (unnamed[30, 3] == 200).all()
    # beside (browse_dataset's small crops, which the corner legend covered): nothing hidden
    small = np.full((20, 30, 3), 200, dtype=np.uint8)
    classes = np.zeros((20, 30), dtype=np.uint8)
    classes[10:, 15:], classes[0, 0] = 1, 255
    beside = draw_segmentation(small, classes, ["wall", "thing"],
                               np.array([[0, 0, 255], [0, 255, 0]], dtype=np.uint8),
                               ignore_index=255, legend_beside=True)
    expected = np.zeros((20, 30, 3), dtype=np.uint8)
    expected[...] = [100, 100, 227]  # wall, half blue over 200
    expected[10:, 15:] = [100, 227, 100]
    expected[0, 0] = 164  # ignore, half 128 over 200
    assert beside.shape[0] == 10 + 16 * 3 and beside.shape[1] > 30 + 26  # three rows, taller
    assert (beside[:20, :30] == expected).all()  # no backing, no swatch over the image
    assert (beside[20:, :30] == 32).all()  # below the image: the panel's grey
    assert (beside[6 + 16 * 2 + 6, 30 + 10] == 128).all()  # the third swatch: "ignore" grey


def test_masks_are_filled_one_at_a_time_as_shown() -> None:
    """Each shown mask in its class's colour at half opacity, the others not; the masks are
    not copied (masks[shown] copied a large photo's 100 masks: gigabytes)."""
    import tracemalloc

    image = np.full((200, 300, 3), 100, np.uint8)
    masks = np.zeros((40, 200, 300), bool)
    for k in range(40):
        masks[k, 5 * k:5 * k + 4, 10:20] = True
    scores = np.where(np.arange(40) % 2 == 0, 0.9, 0.1)
    det = {"boxes": np.tile([250.0, 150, 290, 190], (40, 1)),  # boxes and tags apart
           "scores": scores, "labels": np.arange(40) % 3, "class_names": ["a"] * 40,
           "masks": masks}
    colours = {0: (255, 0, 0), 1: (0, 255, 0), 2: (0, 0, 255)}
    tracemalloc.start()
    try:
        picture = draw_detections(image, det, colours, min_score=0.5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < masks.nbytes // 4, peak
    for k in range(40):
        pixel = picture[5 * k + 2, 15]
        expected = (np.float32(0.5) * np.asarray(colours[k % 3], np.float32)
                    + np.float32(0.5) * 100).astype(np.uint8) if k % 2 == 0 else [100] * 3
        np.testing.assert_array_equal(pixel, expected)


def test_masks_given_as_coco_rles_are_drawn_as_their_bitmasks() -> None:
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    masks = rng.random((5, 70, 90)) > 0.6
    masks[3] = False
    masks[3, 60:, 80:] = True  # at the corner
    masks[4] = False  # empty
    det = {"boxes": np.tile([5.0, 5, 40, 30], (5, 1)), "scores": np.full(5, 0.9),
           "labels": np.arange(5) % 2, "class_names": ["a", "b"] * 2 + ["a"], "masks": masks}
    rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    rles = [{"size": r["size"], "counts": r["counts"].decode("ascii")} for r in rles]
    colours = {0: (255, 0, 0), 1: (0, 255, 0)}
    expected = draw_detections(image, det, colours, min_score=0.5)
    without = {key: value for key, value in det.items() if key != "masks"}
    assert (expected != draw_detections(image, without, colours, 0.5)).any()  # masks show
    np.testing.assert_array_equal(draw_detections(image, {**det, "masks": rles}, colours, 0.5),
                                  expected)


def test_tags_grow_with_large_pictures_as_detectron2s_do() -> None:
    """Up to 800 x 1333 pixels the usual tags; a 4000 x 6000 photo's as the square root of
    its pixels (4.7 times): the usual ones could not be read on the whole picture."""
    assert visualize.tag_scale((480, 640, 3)) == visualize.tag_scale((800, 1333, 3)) == 1.0
    assert visualize.tag_scale((4000, 6000, 3)) == pytest.approx(4.744, abs=0.001)

    def tag_height(shape: tuple[int, int]) -> int:
        image = np.zeros((*shape, 3), np.uint8)
        det = {"boxes": np.array([[100.0, 200, 300, 400]]), "scores": np.array([0.9]),
               "labels": np.array([1]), "class_names": ["cat"]}
        picture = draw_detections(image, det, {1: (255, 0, 0)}, min_score=0.5)
        # the rows of the tag's filled backing, above the box
        return int((picture[:200, 100:, 0] == 255).any(axis=1).sum())

    small, large = tag_height((600, 800)), tag_height((4000, 6000))
    assert 8 <= small <= 16
    assert 4 * small <= large <= 5 * small


def test_names_no_font_here_draws_become_their_ids(monkeypatch, caplog) -> None:
    """OpenCV's Hershey font drew each Chinese character as "?": every class read "???".
    Where no font of the machine has a name's characters, its tag says its id (once warned)."""
    monkeypatch.setattr(visualize, "font_for", lambda text: None)
    visualize._SAID_UNDRAWABLE.discard("正方形")
    caplog.set_level(logging.WARNING)
    assert drawable_name("正方形", 7) == ("id 7", None)
    assert drawable_name("Möwe", 3) == ("Möwe", None)  # Latin-1: Hershey's
    image = np.full((40, 120, 3), 200, dtype=np.uint8)
    det = {"boxes": np.array([[10.0, 20.0, 50.0, 35.0]]), "scores": np.array([0.9]),
           "labels": np.array([7]), "class_names": ["正方形"]}
    as_id = {"boxes": det["boxes"], "scores": det["scores"], "labels": det["labels"],
             "class_names": ["id 7"]}
    assert (draw_detections(image, det, {7: (255, 0, 0)}, 0.5)
            == draw_detections(image, as_id, {7: (255, 0, 0)}, 0.5)).all()
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and "class '正方形' is drawn as 'id 7': no font here" in said[0]
    # browse and analyze_results draw labels 0..K-1: their tags said "id 0" where the demo's
    # said the dataset's category id; "category_ids" gives it
    indexed = {**det, "labels": np.array([0]), "category_ids": [42]}
    as_42 = {**indexed, "class_names": ["id 42"]}
    assert (draw_detections(image, indexed, {0: (255, 0, 0)}, 0.5)
            == draw_detections(image, as_42, {0: (255, 0, 0)}, 0.5)).all()
    assert (draw_detections(image, indexed, {0: (255, 0, 0)}, 0.5)
            != draw_detections(image, {**as_42, "class_names": ["id 0"]}, {0: (255, 0, 0)},
                               0.5)).any()


def test_names_beyond_latin1_are_drawn_in_a_font_that_has_them() -> None:
    """Cyrillic, Greek (and Chinese where a CJK font is installed) names were "id N": they
    are drawn with a TrueType font that has their characters, matplotlib's DejaVu Sans here,
    in tags as wide as that font writes them, and in the segmentation legend."""
    from PIL import ImageFont
    name, font = drawable_name("собака", 3)
    assert name == "собака" and Path(font).name == "DejaVuSans.ttf"
    image = np.full((60, 200, 3), 200, dtype=np.uint8)
    det = {"boxes": np.array([[10.0, 30.0, 150.0, 55.0]]), "scores": np.array([0.9]),
           "labels": np.array([3]), "class_names": ["собака"]}
    picture = draw_detections(image, det, {3: (255, 0, 0)}, 0.5)
    tag_row = (picture[20] == (255, 0, 0)).all(axis=-1) | (picture[20] < 100).all(axis=-1)
    left, _, right, _ = ImageFont.truetype(font, visualize.TAG_PIXELS).getbbox(
        "собака 0.90", anchor="ls")
    assert np.flatnonzero(tag_row).max() - 10 == right - min(left, 0)
    dark = (picture[:30] < 100).all(axis=-1)  # the name's black strokes in the tag
    assert dark.sum() > 40
    as_id = dict(det, class_names=["id 3"])
    assert (picture != draw_detections(image, as_id, {3: (255, 0, 0)}, 0.5)).any()
    mask = np.zeros((60, 200), dtype=np.uint8)
    mask[40:, 100:] = 1
    legend = draw_segmentation(image, mask, ["background", "κύκλος"],
                               np.array([[0, 0, 0], [0, 255, 0]], dtype=np.uint8))
    assert (legend[5:20, 20:70] > 200).all(axis=-1).sum() > 20  # white strokes of the name


def test_neighbouring_classes_get_other_colours() -> None:
    """Evenly spaced hues drew ADE20K's classes 0-5 (wall, building, sky, floor, tree,
    ceiling) in one red: neighbours 7 apart in RGB at 150 classes."""
    for n in (2, 19, 150, 255):
        colours = palette(n).astype(float)
        assert colours.shape == (n, 3)
        assert np.linalg.norm(colours[1:] - colours[:-1], axis=1).min() > 150
        assert len({tuple(c) for c in colours}) == n
    few = palette(19).astype(float)  # Cityscapes: any two far apart
    distances = np.linalg.norm(few[:, None] - few[None], axis=2)
    assert distances[~np.eye(19, dtype=bool)].min() > 50


def _clip(path: Path, frames: int) -> Path:
    """A small MJPG video of `frames` grey frames, each lighter than the last."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), min(40 * i, 255), np.uint8))
    writer.release()
    return path


def _noisy_clip(path: Path, codec: str) -> Path:
    """A video of 20 frames of noise (64 x 48, 5 per second) in `codec`."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), 5, (64, 48))
    for i in range(20):
        writer.write(np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    return path


def _first_half(path: Path, cut: Path) -> Path:
    """The file `cut` holding the first half of `path`'s bytes (a recording cut short)."""
    cut.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    return cut


def test_a_video_stopped_partway_leaves_the_earlier_video_whole(tmp_path: Path) -> None:
    """Ctrl-C during a demo's video replaced the complete video of an earlier run with the
    frames drawn so far."""
    clip = _clip(tmp_path / "clip.avi", 6)
    out = tmp_path / "drawn" / "clip.mp4"
    assert run_video(clip, lambda frame: frame, out) == out
    complete = out.read_bytes()
    drawn = []

    def stopped_at_the_third(frame: np.ndarray) -> np.ndarray:
        drawn.append(frame)
        if len(drawn) == 3:
            raise KeyboardInterrupt
        return 255 - frame

    with pytest.raises(KeyboardInterrupt):
        run_video(clip, stopped_at_the_third, out)
    assert out.read_bytes() == complete
    assert [p.name for p in out.parent.iterdir()] == ["clip.mp4"]  # no partial file left
    run_video(clip, lambda frame: 255 - frame, out)  # a complete run replaces it
    capture = cv2.VideoCapture(str(out))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == 6 and out.read_bytes() != complete


def _read_video(path: Path) -> list[np.ndarray]:
    capture, frames = cv2.VideoCapture(str(path)), []
    while (frame := capture.read())[0]:
        frames.append(frame[1])
    capture.release()
    return frames


def test_awkward_videos_are_drawn_whole_or_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """A picture of odd size lost its last row and column (mp4v takes even sizes); a cut file
    drew its first frames without a word; a rate mp4v cannot take (a damaged header's) stopped
    the demo, blaming a missing encoder."""
    clip = _clip(tmp_path / "clip.avi", 20)
    out = tmp_path / "drawn" / "clip.mp4"
    run_video(clip, lambda frame: np.full((47, 63, 3), 200, np.uint8), out)
    drawn = _read_video(out)
    assert len(drawn) == 20 and drawn[0].shape == (48, 64, 3)  # padded: 46 x 62 before
    assert drawn[0][:46, :62].mean() > 190 and drawn[0][47:, :].mean() < 20
    # (frames of some size: half the file holds its header)
    cut = _first_half(_noisy_clip(tmp_path / "noisy.avi", "MJPG"), tmp_path / "cut.avi")
    with caplog.at_level(logging.INFO):
        run_video(cut, lambda frame: frame, tmp_path / "drawn" / "cut.mp4")
    read = len(_read_video(tmp_path / "drawn" / "cut.mp4"))
    assert 0 < read < 19
    assert (f"{cut}: read {read} of the 20 frames its header counts (a cut or damaged file?): "
            f"drew those") in caplog.text
    real = cv2.VideoWriter

    def no_odd_rates(path: str, fourcc: int, fps: float, size: tuple[int, int]) -> object:
        return real(path, fourcc, fps if fps == 25.0 else -1.0, size)

    monkeypatch.setattr(visualize.cv2, "VideoWriter", no_odd_rates)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run_video(clip, lambda frame: frame, out)
    assert len(_read_video(out)) == 20
    assert f"{out}: the video's frame rate 5 cannot be written: drawn at 25" in caplog.text


def test_a_video_that_cannot_be_opened_says_why(tmp_path: Path) -> None:
    """It said "cannot open video PATH" alone."""
    empty, junk = tmp_path / "empty.mp4", tmp_path / "junk.mp4"
    empty.write_bytes(b"")
    junk.write_bytes(b"RIFF\0\0\0\0AVI LIST" * 40)
    with pytest.raises(visualize.UnreadableImageError, match=r"empty.mp4: an empty file$"):
        run_video(empty, lambda frame: frame, tmp_path / "drawn" / "empty.mp4")
    with pytest.raises(visualize.UnreadableImageError,
                       match=r"junk.mp4: OpenCV's FFmpeg reads neither its container nor its "
                             r"codec, or it is no video \(`ffmpeg -i FILE` names them"):
        run_video(junk, lambda frame: frame, tmp_path / "drawn" / "junk.mp4")
    # a recording cut before the index a camera (and OpenCV's mp4v writer) writes last: it
    # was "reads neither its container nor its codec", and re-encoding it fails as well
    whole = _noisy_clip(tmp_path / "whole.mp4", "mp4v")
    cut = _first_half(whole, tmp_path / "cut.mp4")
    assert not visualize.lacks_mp4_index(whole) and visualize.lacks_mp4_index(cut)
    with pytest.raises(visualize.UnreadableImageError,
                       match=r"cut.mp4: an MP4/MOV file without its index \(no 'moov' box"):
        run_video(cut, lambda frame: frame, tmp_path / "drawn" / "cut.mp4")
    assert not (tmp_path / "drawn").exists()


def test_a_video_that_cannot_be_replaced_keeps_the_new_one_beside_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows: the earlier video open in a player. The new one was deleted with the partial
    file, after the whole video had been drawn."""
    clip = _clip(tmp_path / "clip.avi", 3)
    out = tmp_path / "drawn" / "clip.mp4"
    out.parent.mkdir()
    out.write_bytes(b"the earlier video")
    real = os.replace

    def held_open(src: object, dst: object) -> None:
        if Path(dst) == out:
            raise PermissionError(13, "The process cannot access the file")
        real(src, dst)

    monkeypatch.setattr(os, "replace", held_open)
    with pytest.raises(UnwritableFolderError, match=rf"cannot replace {re.escape(str(out))} "
                                                    r"\(The process cannot access the file\); "
                                                    r"the video drawn now is .*clip.new.mp4"):
        run_video(clip, lambda frame: frame, out)
    assert out.read_bytes() == b"the earlier video"
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip.mp4", "clip.new.mp4"]
    assert (out.parent / "clip.new.mp4").stat().st_size > 0


def test_a_picture_whose_write_fails_leaves_the_earlier_one_whole(tmp_path: Path) -> None:
    """A kill or a full disk while tools/demo.py wrote a picture left it cut short (beside its
    complete JSON). Here the write fails at 4 KB (a file size limit, in a forked process)."""
    import errno
    import resource
    import signal

    out = tmp_path / "picture.png"
    visualize.write_picture(np.zeros((8, 8, 3), np.uint8), out)
    before = out.read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    pid = os.fork()
    if pid == 0:  # (exits without returning into pytest)
        code = 5
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
            visualize.write_picture(noise, out)
            code = 0
        except OSError as e:
            code = 3 if e.errno == errno.EFBIG else 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3  # the write failed at the limit
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["picture.png"]  # no partial file left


def test_a_folder_replaced_leaves_its_neighbours_alone(tmp_path: Path) -> None:
    """The scratch name of a replaced folder was <name>.old beside it: demo's class maps of a
    video cam.old.mp4 (predictions/cam.old/) were deleted when cam.mp4's replaced theirs; a
    file in the folder's place was moved to <name>.old and left there."""
    from resnet_detect.engine.files import replace_folder
    maps = tmp_path / "predictions"
    for name in ("cam", "cam.old", "new"):
        (maps / name).mkdir(parents=True)
        (maps / name / "000000.png").write_text(name)
    replace_folder(maps / "new", maps / "cam")
    assert sorted(p.relative_to(maps).as_posix() for p in maps.rglob("*")) == [
        "cam", "cam.old", "cam.old/000000.png", "cam/000000.png"]
    assert (maps / "cam/000000.png").read_text() == "new"
    (maps / "file").write_text("in the folder's place")
    (maps / "new").mkdir()
    replace_folder(maps / "new", maps / "file")
    assert (maps / "file").is_dir() and not list(maps.glob(".*"))


def test_a_video_of_another_suffix_or_an_animated_gif_is_drawn_as_a_video(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An MJPG AVI named clip.xvid was "cannot be decoded" (read as an image), and an animated
    GIF became a .jpg of its first frame without a word."""
    from PIL import Image

    xvid = _clip(tmp_path / "clip.avi", 6).rename(tmp_path / "clip.xvid")
    frames = [Image.fromarray(np.full((40, 60, 3), 60 * i, np.uint8)) for i in range(4)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(tmp_path / "still.gif")
    (tmp_path / "photo.xyz").write_bytes(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1])
    # an image in ISO media's box (HEIF): the brand, not the box, tells it from a video's
    (tmp_path / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64)
    (tmp_path / "clip.mp4").write_bytes(b"not read: the suffix says it")
    found = {p.name: visualize.is_video(p) for p in sorted(tmp_path.iterdir())}
    assert found == {"anim.gif": True, "clip.mp4": True, "clip.xvid": True, "photo.heic": False,
                     "photo.xyz": False, "still.gif": False}
    inputs = [(tmp_path / name, Path(name)) for name in ("clip.xvid", "anim.gif", "still.gif")]
    outs = visualize.output_paths(inputs, tmp_path / "drawn")
    assert [o.name for o in outs] == ["clip.mp4", "anim.mp4", "still.jpg"]
    run_video(xvid, lambda frame: frame, outs[0])
    assert len(_read_video(outs[0])) == 6
    run_video(tmp_path / "anim.gif", lambda frame: frame, outs[1])
    means = [f.mean() for f in _read_video(outs[1])]  # (mp4v is lossy)
    assert len(means) == 4 and np.allclose(means, [0, 60, 120, 180], atol=5)
    # a GIF past Pillow's decompression-bomb limit is looked at too (its error stopped the
    # demo before anything was drawn): an image, read as read_image reads one
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert not visualize.is_video(tmp_path / "still.gif")
