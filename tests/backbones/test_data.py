"""backbones.data: ImageFolder scanning, OpenCV decoding, transforms, unreadable images, loader."""
from __future__ import annotations

import logging
import io
import itertools
import random
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from resnet_detect.backbones.data import (ImageBatch, ImageFolderDataset, build_train_transform,
                                          build_val_transform, collate_images, normalize_images,
                                          scan_image_folder, stack)
from resnet_detect.engine.config import ConfigError
from resnet_detect.engine.data import (DatasetError, PackedRecords, UnreadableImageError,
                                       build_train_loader, collate, image_size, read_image)

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def make_tree(root: Path, counts: dict[str, int], size: int = 24) -> None:
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
            cv2.imwrite(str(root / name / f"{i}.png"), image)


def test_scan_sorts_classes_and_files_and_ignores_other_files(tmp_path: Path) -> None:
    make_tree(tmp_path / "train", {"dog": 2, "cat": 3})
    (tmp_path / "train/cat/notes.txt").write_text("not an image")
    (tmp_path / "train/dog/sub").mkdir()
    cv2.imwrite(str(tmp_path / "train/dog/sub/x.JPG"), np.zeros((8, 8, 3), np.uint8))
    # torchvision's ImageFolder extensions: Netpbm's too
    cv2.imwrite(str(tmp_path / "train/dog/y.ppm"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "train/dog/z.pgm"), np.zeros((8, 8), np.uint8))
    samples, classes = scan_image_folder(tmp_path / "train")
    assert classes == ["cat", "dog"]
    assert [(Path(p).relative_to(tmp_path / "train").as_posix(), label)
            for p, label in samples] == [("cat/0.png", 0), ("cat/1.png", 0), ("cat/2.png", 0),
                                         ("dog/0.png", 1), ("dog/1.png", 1), ("dog/sub/x.JPG", 1),
                                         ("dog/y.ppm", 1), ("dog/z.pgm", 1)]
    assert read_image(tmp_path / "train/dog/z.pgm").shape == (8, 8, 3)
    make_tree(tmp_path / "val", {"dog": 1})
    val, _ = scan_image_folder(tmp_path / "val", classes)
    assert [label for _, label in val] == [1]


def test_scan_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"dataset folder not found: {tmp_path}/nope"):
        scan_image_folder(tmp_path / "nope")
    # data.root a file (an annotation file) or a split's own folder: said which
    (tmp_path / "train.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"train.json is a file: data.root is the folder "
                                                r"holding train/"):
        scan_image_folder(tmp_path / "train.json" / "train")
    with pytest.raises(FileNotFoundError, match=r"\(data.root .*/train is a split's own folder\? "
                                                r"It is the folder that holds train/\)"):
        scan_image_folder(tmp_path / "train" / "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders in .*empty"):
        scan_image_folder(tmp_path / "empty")
    (tmp_path / "empty/a").mkdir()
    with pytest.raises(ValueError, match="no images .* under .*empty"):
        scan_image_folder(tmp_path / "empty")
    make_tree(tmp_path / "val", {"bird": 1})
    with pytest.raises(ValueError, match=r"has classes the model was not trained on \(the "
                                         r"training split.s, or the evaluated weights.\): "
                                         r"bird$"):
        scan_image_folder(tmp_path / "val", ["cat", "dog"])


def test_scan_skips_hidden_folders_follows_links_and_refuses_empty_classes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A notebook's .ipynb_checkpoints became a class, an empty folder a class that can
    never be learnt, and images behind a symlinked folder were silently left out."""
    make_tree(tmp_path / "train", {"cat": 2, "dog": 1, ".ipynb_checkpoints": 1})
    make_tree(tmp_path / "more", {"dogs": 2})
    (tmp_path / "train/dog/linked").symlink_to(tmp_path / "more/dogs")
    (tmp_path / "train/dog/loop").symlink_to(tmp_path / "train/dog")  # each folder once
    (tmp_path / "train/cat/.hidden").mkdir()
    cv2.imwrite(str(tmp_path / "train/cat/.hidden/x.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "train/cat/._0.png").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble
    samples, classes = scan_image_folder(tmp_path / "train")
    assert classes == ["cat", "dog"]
    assert sorted(Path(p).relative_to(tmp_path / "train").as_posix() for p, _ in samples) == [
        "cat/0.png", "cat/1.png", "dog/0.png", "dog/linked/0.png", "dog/linked/1.png"]
    assert "left out" not in caplog.text
    # photos of suffixes torchvision's ImageFolder reads neither (a browser's .jfif): said
    for name in ("a.jfif", "b.jfif", "c.gif", "README"):
        (tmp_path / "train/cat" / name).write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        assert len(scan_image_folder(tmp_path / "train")[0]) == 5
    assert (f"{tmp_path / 'train'}: left out 4 files of other suffixes than an image's (.bmp "
            f".jpeg .jpg .pgm .png .ppm .tif .tiff .webp): 1 (none), 1 .gif, 2 .jfif"
            in caplog.text)
    (tmp_path / "train/zebra").mkdir()
    (tmp_path / "train/zebra/notes.txt").write_text("no image")
    with pytest.raises(ValueError, match="train: class folders without images .*: zebra"):
        scan_image_folder(tmp_path / "train")
    (tmp_path / "val/zebra").mkdir(parents=True)
    make_tree(tmp_path / "val", {"cat": 1})
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(scan_image_folder(tmp_path / "val", ["cat", "dog", "zebra"])[0]) == 1
    assert (f"{tmp_path / 'val'}: class folders without images: zebra (the accuracy is over "
            f"the other classes)") in caplog.text
    # the same name spelt decomposed (as macOS stores it) is the same class
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    make_tree(tmp_path / "u/train", {composed: 1})
    make_tree(tmp_path / "u/val", {decomposed: 1})
    _, classes = scan_image_folder(tmp_path / "u/train")
    assert [label for _, label in scan_image_folder(tmp_path / "u/val", classes)[0]] == [0]
    # and sorts as composed: "cafe\u0301" < "cafz" < "caf\u00e9" by raw code points; where
    # torchvision's ImageFolder numbers them otherwise (as stored), said (a torchvision model
    # of such a disk scored 33% for 100% without a word)
    for spelling, tree in ((composed, "nfc"), (decomposed, "nfd")):
        make_tree(tmp_path / tree, {spelling: 1, "cafz": 1})
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert scan_image_folder(tmp_path / tree)[1] == ["cafz", composed]
        assert ("by torchvision's ImageFolder on this disk as stored" in caplog.text) == (
            tree == "nfd")
    assert f"{tmp_path / 'nfd'}: class folders whose names are stored in another Unicode form " \
           f"than the composed one (NFC; macOS writes an accent apart from its letter: " \
           f"['cafe\\u0301']) are sorted here as composed" in caplog.text


def test_scan_refuses_images_outside_class_folders_and_classes_that_share_images(
        tmp_path: Path) -> None:
    """Images left loose in the split folder (ImageNet's val archive, a half-sorted folder)
    were silently not evaluated; two spellings of one name were merged into one label with
    another label left without images; a folder linked into two classes was learnt under both
    labels; a NAS's thumbnail folders were trained on."""
    make_tree(tmp_path / "val", {"cat": 1, "dog": 1})
    cv2.imwrite(str(tmp_path / "val/ILSVRC2012_val_00000001.JPEG"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"val: 1 images outside class folders \(e.g. "
                                           r"ILSVRC2012_val_00000001.JPEG\).*LOC_val_solution"):
        scan_image_folder(tmp_path / "val", ["cat", "dog"])
    # ImageNet's training archive half unpacked: a .tar per class left beside the folders (its
    # classes were blamed on the val split, or "no class folders")
    make_tree(tmp_path / "half", {"n01440764": 1})
    (tmp_path / "half/n01443537.tar").write_bytes(b"")
    (tmp_path / "half/n01440764.tar").write_bytes(b"")  # (extracted, kept: no matter)
    with pytest.raises(DatasetError, match=r"half holds 1 .tar archives without their class "
                                           r"folder \(e.g. n01443537.tar\), beside 1 class "
                                           r"folders: ImageNet's training archive holds one per "
                                           r"class; extract each"):
        scan_image_folder(tmp_path / "half")
    (tmp_path / "half/n01443537.tar").unlink()
    assert scan_image_folder(tmp_path / "half")[1] == ["n01440764"]
    make_tree(tmp_path / "nfc", {"caf\u00e9": 1, "cafe\u0301": 1, "zz": 1})
    with pytest.raises(DatasetError, match="two folders spell one class name 'caf\u00e9'"):
        scan_image_folder(tmp_path / "nfc")
    make_tree(tmp_path / "train", {"cat": 1, "dog": 1})
    (tmp_path / "train/cat/more").symlink_to(tmp_path / "train/dog")
    with pytest.raises(DatasetError, match="folder .*train/dog is in class dog and in class cat"):
        scan_image_folder(tmp_path / "train")
    (tmp_path / "train/cat/more").unlink()
    for junk in ("cat/@eaDir/0.png", "cat/__MACOSX/x.png", "@eaDir/x/SYNOPHOTO_THUMB_M.jpg",
                 "__MACOSX/cat/y.png", "._preview.png"):  # hidden: not a loose image
        (tmp_path / "train" / junk).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "train" / junk), np.zeros((8, 8, 3), np.uint8))
    samples, classes = scan_image_folder(tmp_path / "train")
    assert classes == ["cat", "dog"]
    assert [Path(p).relative_to(tmp_path / "train").as_posix() for p, _ in samples] == [
        "cat/0.png", "dog/0.png"]


def test_read_image_is_rgb_and_honours_exif_orientation(tmp_path: Path) -> None:
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    rgb = read_image(tmp_path / "red.png")
    assert rgb.shape == (4, 6, 3) and (rgb[..., 0] == 255).all() and (rgb[..., 1:] == 0).all()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise
    Image.new("RGB", (20, 10), (0, 0, 255)).save(tmp_path / "rot.jpg", exif=exif)
    assert read_image(tmp_path / "rot.jpg").shape == (20, 10, 3)
    assert image_size(tmp_path / "rot.jpg") == (20, 10)  # from the header, EXIF applied
    assert image_size(tmp_path / "red.png") == (4, 6)
    for suffix in (".png", ".webp", ".tiff"):  # Pillow reports a TIFF's size rotated already
        Image.new("RGB", (20, 10), (0, 0, 255)).save(tmp_path / f"rot{suffix}", exif=exif)
        assert image_size(tmp_path / f"rot{suffix}") == read_image(
            tmp_path / f"rot{suffix}").shape[:2], suffix
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(UnreadableImageError, match="bad.jpg: cannot be decoded"):
        read_image(tmp_path / "bad.jpg")
    with pytest.raises(UnreadableImageError, match="missing.png: file not found"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "empty.jpg").touch()  # a copy that was interrupted
    with pytest.raises(UnreadableImageError, match=r"empty.jpg: an empty file \(0 bytes\)"):
        read_image(tmp_path / "empty.jpg")


def test_an_image_over_opencvs_pixel_limit_says_so(tmp_path: Path) -> None:
    """It was only "cannot be decoded"; OpenCV reads its limit once per process."""
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((20, 30, 3), np.uint8))
    code = ("from resnet_detect.engine.data import read_image\n"
            f"read_image({str(tmp_path / 'big.png')!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": "100"},
                          cwd=Path(__file__).resolve().parents[2])
    assert "big.png: cannot be decoded: 30x20 pixels, over OpenCV's limit of 100 " \
           "(OPENCV_IO_MAX_IMAGE_PIXELS)" in proc.stderr


def test_read_image_refuses_a_truncated_jpeg(tmp_path: Path) -> None:
    """libjpeg decodes a JPEG cut short with grey rows and a warning naming no file: it must
    be refused as unreadable (datasets skip it), while whole files decode, with data
    appended after their end or an EXIF thumbnail (whose end marker precedes the image's
    scan) inside."""
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    thumbnail = io.BytesIO()
    Image.fromarray(noise[:8, :8]).save(thumbnail, "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 1
    for name, options in [("base.jpg", {}), ("progressive.jpg", {"progressive": True})]:
        Image.fromarray(noise).save(tmp_path / name, **options)
        whole = (tmp_path / name).read_bytes()
        assert np.array_equal(read_image(tmp_path / name),
                              cv2.cvtColor(cv2.imread(str(tmp_path / name)), cv2.COLOR_BGR2RGB))
        (tmp_path / "trailer.jpg").write_bytes(whole + b"\x00" * 16 + b"MAKER TRAILER" + whole)
        assert read_image(tmp_path / "trailer.jpg").shape == (48, 64, 3)
        # a motion photo: a video after the image, whose bytes hold scan markers but no end
        video = b"\x00\x00\x00\x18ftypmp42" + noise.tobytes() + b"\xff\xda\x00\x08" + bytes(64)
        (tmp_path / "motion.jpg").write_bytes(whole + video)
        assert read_image(tmp_path / "motion.jpg").shape == (48, 64, 3)
        (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) * 2 // 3])
        with pytest.raises(UnreadableImageError, match="cut.jpg: truncated JPEG"):
            read_image(tmp_path / "cut.jpg")
    # an APP1 segment holding a whole JPEG (a thumbnail) before the image's own scan
    base = (tmp_path / "base.jpg").read_bytes()
    app1 = b"Exif\x00\x00" + thumbnail.getvalue()
    with_thumbnail = base[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + base[2:]
    (tmp_path / "thumb.jpg").write_bytes(with_thumbnail)
    assert read_image(tmp_path / "thumb.jpg").shape == (48, 64, 3)
    (tmp_path / "thumb_cut.jpg").write_bytes(with_thumbnail[: len(with_thumbnail) - 400])
    with pytest.raises(UnreadableImageError, match="thumb_cut.jpg: truncated JPEG"):
        read_image(tmp_path / "thumb_cut.jpg")


def test_val_transform_resizes_crops_center_and_normalizes() -> None:
    # Columns hold 3 * x; the 64-px crop after resizing 80 -> 72 wide sees columns 22..57.
    image = np.repeat((3 * np.arange(80, dtype=np.uint8))[None, :, None], 40, axis=0)
    image = np.repeat(image, 3, axis=2)
    out = build_val_transform(image_size=32, resize=36)(image=image)["image"]
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    pixels = out[..., 0] * STD[0] + MEAN[0]
    assert pixels.mean() == pytest.approx(3 * 39.5, abs=3.0)
    flat = np.full((10, 10, 3), 200, np.uint8)
    normed = build_val_transform(image_size=10, resize=10)(image=flat)["image"]
    expected = [(200 - m) / s for m, s in zip(MEAN, STD)]
    np.testing.assert_allclose(normed[0, 0], expected, rtol=1e-5)


def test_the_area_filter_shrinks_and_a_bilinear_one_enlarges() -> None:
    """OpenCV's INTER_AREA enlarges as nearest neighbour does (2x: every pixel twice): the
    transforms take it where the image shrinks only, bilinear where it grows."""
    rng = np.random.default_rng(0)
    small, large = (rng.integers(0, 256, (n, n, 3), dtype=np.uint8) for n in (24, 96))
    for size, image, filter_ in [(48, small, cv2.INTER_LINEAR), (48, large, cv2.INTER_AREA)]:
        expected = cv2.resize(image, (size, size), interpolation=filter_)
        train = build_train_transform(image_size=size, scale=(1.0, 1.0), hflip=False,
                                      normalize=False)
        train.set_random_state(np.random.default_rng(0), random.Random(0))
        np.testing.assert_array_equal(train(image=image)["image"], expected)
        val = build_val_transform(image_size=size, resize=size, normalize=False)
        np.testing.assert_array_equal(val(image=image)["image"], expected)
    grown = build_val_transform(image_size=48, resize=48, normalize=False)(image=small)["image"]
    assert not np.array_equal(grown[::2, ::2], grown[1::2, 1::2])  # not each pixel twice


def test_hflip_false_never_mirrors_and_true_mirrors_about_half() -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, :8] = 255  # bright on the left only
    flips = []
    for hflip in (False, True):
        transform = build_train_transform(image_size=32, scale=(1.0, 1.0), hflip=hflip,
                                          normalize=False)
        mirrored = 0
        for seed in range(40):
            transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
            out = transform(image=image)["image"]
            mirrored += int(out[:, -1].mean() > out[:, 0].mean())
        flips.append(mirrored)
    assert flips[0] == 0 and 10 <= flips[1] <= 30


def test_val_interpolations_of_pillow_are_torchvisions_and_timms_evaluation() -> None:
    """Bilinear: torchvision's references' Resize(256) + CenterCrop(224) on a Pillow image;
    bicubic: timm's evaluation transform (crop_pct 0.875) of its bicubic weights. The
    same pixels, for sizes whose longer side and crop offsets round differently (odd,
    portrait, landscape, square)."""
    import timm  # (1.5 s to import: only in the tests that compare with it)
    rng = np.random.default_rng(0)
    bilinear = torchvision.transforms.Compose([
        torchvision.transforms.Resize(256), torchvision.transforms.CenterCrop(224)])
    bicubic = timm.data.create_transform(input_size=224, crop_pct=0.875,
                                         interpolation="bicubic", is_training=False,
                                         mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    # 257 x 261: the longer side 259.98 (torchvision truncates), the crop offset 17.5
    # (torchvision rounds); the others common photo shapes
    for height, width in ((257, 261), (261, 257), (375, 500), (500, 333), (301, 301),
                          (600, 263)):
        image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
                                 (5, 5), 0)
        ours = build_val_transform(image_size=224, resize=256, normalize=False,
                                   interpolation="bilinear")(image=image)["image"]
        assert np.array_equal(ours, np.asarray(bilinear(Image.fromarray(image)))), (height, width)
        ours = build_val_transform(image_size=224, resize=256, normalize=False,
                                   interpolation="bicubic")(image=image)["image"]
        theirs = bicubic(Image.fromarray(image)).permute(1, 2, 0).numpy() * 255
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4, err_msg=f"{height, width}")
    with pytest.raises(ConfigError, match="data.val_interpolation must be one of area, bilinear, "
                                          "bicubic, got 'nearest'"):
        build_val_transform(image_size=224, resize=256, interpolation="nearest")


def test_seeded_train_samples_are_reproducible(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a": 2, "b": 2}, size=40)
    samples, classes = scan_image_folder(tmp_path)
    ds = ImageFolderDataset(samples=samples, class_names=classes,
                            transform=build_train_transform(image_size=16))
    x, y, z = ds[(1, 5)], ds[(1, 5)], ds[(1, 6)]
    assert x["image"].shape == (3, 16, 16) and x["label"] == 0
    assert torch.equal(x["image"], y["image"])
    assert not torch.equal(x["image"], z["image"])


def test_unreadable_image_is_skipped_and_dropped_from_the_batch(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_tree(tmp_path, {"a": 2, "b": 1})
    bad = tmp_path / "a/1.png"
    bad.write_bytes(b"not a png")
    samples, classes = scan_image_folder(tmp_path)
    ds = ImageFolderDataset(samples=samples, class_names=classes,
                            transform=build_val_transform(image_size=16, resize=16))
    assert ds[1] is None  # the one policy of every task: skipped, logged, counted by the runner
    assert f"skipping unreadable image: {bad}: cannot be decoded" in caplog.text
    images, labels = stack(collate([ds[0], ds[1], ds[2]]))
    assert images.shape == (2, 3, 16, 16)
    assert labels.tolist() == [0, 1]
    # said once, not at every epoch (the run's end counts every skip)
    assert ds[1] is None and ds[(1, 7)] is None
    assert caplog.text.count(f"skipping unreadable image: {bad}") == 1


def test_uint8_samples_normalized_on_the_device_equal_the_float_samples(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a": 2, "b": 2}, size=40)
    samples, classes = scan_image_folder(tmp_path)
    floats, bytes_ = (ImageFolderDataset(samples=samples, class_names=classes,
                                         transform=build_train_transform(image_size=16,
                                                                         normalize=normalize))
                      for normalize in (True, False))
    assert bytes_[(2, 7)]["image"].dtype == torch.uint8
    expected = torch.stack([floats[(i, 7)]["image"] for i in range(4)])
    got = normalize_images(torch.stack([bytes_[(i, 7)]["image"] for i in range(4)]), MEAN, STD)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.std() > 0.5  # real pictures, not a constant


def test_workers_collate_one_image_batch_without_the_unreadable_images(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a": 3, "b": 3}, size=20)
    (tmp_path / "a/1.png").write_bytes(b"not a png")
    samples, classes = scan_image_folder(tmp_path)
    ds = ImageFolderDataset(samples=samples, class_names=classes,
                            transform=build_val_transform(image_size=8, resize=8, normalize=False))
    loader = build_train_loader(ds, batch_size=6, num_workers=1, seed=0,
                                collate_fn=collate_images)
    batch = next(iter(loader))
    assert isinstance(batch, ImageBatch) and len(batch) == 5  # the runner counts one skipped
    assert batch.images.shape == (5, 3, 8, 8) and batch.images.dtype == torch.uint8
    assert sorted(batch.labels.tolist()) == [0, 0, 1, 1, 1]
    images, _ = stack([ds[i] for i in range(6) if ds[i] is not None])
    assert {tuple(x.flatten().tolist()) for x in batch.images} == {
        tuple(x.flatten().tolist()) for x in images}  # the same pictures, in sampler order
    assert not collate_images([None, None])  # all unreadable: an empty batch, a zero step


def test_train_loader_resumes_and_ignores_worker_count(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a": 3, "b": 3}, size=20)
    samples, classes = scan_image_folder(tmp_path)
    ds = ImageFolderDataset(samples=samples, class_names=classes,
                            transform=build_train_transform(image_size=8))

    def batches(start_iter: int, workers: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = build_train_loader(ds, batch_size=2, num_workers=workers, seed=1,
                                    start_iter=start_iter)
        return [stack(b) for b in itertools.islice(iter(loader), n)]

    full = batches(0, 0, 5)
    for resumed, reference in zip(batches(2, 1, 3), full[2:]):
        assert torch.equal(resumed[0], reference[0])
        assert torch.equal(resumed[1], reference[1])
    labels = torch.cat([b[1] for b in full[:3]])
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]  # the first epoch sees every image


# Run in a fresh interpreter, not forked from the pytest worker: forked from a worker that had
# run other test files, the reader of the packed samples copied about 3 MiB in some full-suite
# runs (150 KiB alone), pages its own allocations touch in a heap earlier tests shaped.
_FORKED_READER = """
import gc, os, sys
from resnet_detect.backbones.data import ImageFolderDataset, build_val_transform

def private_dirty_kib():
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Private_Dirty:"))

samples = [(f"/data/imagenet/train/n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG", i % 1000)
           for i in range(100_000)]
if sys.argv[1] == "packed":
    dataset = ImageFolderDataset(samples=samples, class_names=[str(i) for i in range(1000)],
                                 transform=build_val_transform(image_size=8, resize=8))
    assert dataset.samples[12345] == samples[12345] and len(dataset) == len(samples)
    samples = dataset.samples
gc.freeze()  # as the runner does before its loader workers start
read_end, write_end = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        before = private_dirty_kib()
        for i in range(len(samples)):
            path, label = samples[i]
        os.write(write_end, str(private_dirty_kib() - before).encode())
    finally:
        os._exit(0)
os.close(write_end)
print(int(os.read(read_end, 64)))
os.waitpid(pid, 0)
"""


def _copied_by_a_forked_reader(kind: str) -> int:
    """KiB a forked loader worker copies (copy-on-write) by reading 100,000 samples once, held
    as a plain list of tuples or packed by ImageFolderDataset.

    The objects that exist at the fork are frozen out of garbage collection, as the runner does
    before its loader workers start: otherwise a collection in the worker, whenever it happens,
    writes to every object it walks.
    """
    result = subprocess.run([sys.executable, "-c", _FORKED_READER, kind], capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parents[2], check=False)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(),
                    reason="Linux's /proc counts a forked worker's copied pages")
def test_loader_workers_share_the_samples_instead_of_copying_them():
    """ImageNet-sized sample lists copied into every worker grow memory during an epoch: reading
    a list of tuples writes every tuple's and string's reference count."""
    assert _copied_by_a_forked_reader("list") > 10_000  # the list itself: > 10 MiB copied
    assert _copied_by_a_forked_reader("packed") < 2_000


def test_packed_records_index_like_a_list() -> None:
    records = [{"file_name": f"{i}.jpg", "boxes": [[i, 0, 1, 1]] * i} for i in range(5)]
    packed = PackedRecords(records)
    assert len(packed) == 5 and [packed[i] for i in range(5)] == records
    assert packed[-1] == records[-1] and packed[-5] == records[0]  # -1 gave record 0
    with pytest.raises(IndexError):
        packed[5]
    assert len(PackedRecords([])) == 0


def test_the_records_digest_is_of_names_and_labels_under_any_folder(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The processes of a run compare it: each node's copy under its own folder (or a relative
    one given from another working folder) is the same data; a file named otherwise, another
    label or box is not."""
    def records(root: str, label: int = 1, box: float = 4.0, name: str = "b.jpg") -> list:
        return [{"file_name": f"{root}/train/a.jpg", "classes": np.array([0, label]),
                 "boxes": np.array([[0, 0, box, 5]], np.float32), "image_id": np.int64(7)},
                {"file_name": f"{root}/train/sub/{name}", "classes": np.array([], np.int64),
                 "boxes": np.zeros((0, 4), np.float32), "image_id": 8}]

    def digest(records: list, keys: tuple = ("file_name",)) -> str:
        return PackedRecords(records).digest(keys)

    expected = digest(records("/data/coco"))
    assert digest(records("/mnt/local_ssd/copy")) == expected
    monkeypatch.chdir(tmp_path)
    assert digest(records("data/coco")) == digest(records("../x")) == expected
    assert digest(records("/data/coco", label=2)) != expected
    assert digest(records("/data/coco", box=4.5)) != expected
    assert digest(records("/data/coco", name="c.jpg")) != expected
    assert digest(records("/data/coco"), keys=()) != expected  # (the paths as they are)
    moved = [("/d/train/cat/1.jpg", 0), ("/d/train/dog/2.jpg", 1)]
    assert digest(moved, (0,)) == digest([("/e/f/train/cat/1.jpg", 0),
                                         ("/e/f/train/dog/2.jpg", 1)], (0,))
    assert digest(moved, (0,)) != digest([("/d/train/cat/1.jpg", 0),
                                         ("/d/train/cat/2.jpg", 0)], (0,))
    assert digest([{"a": "x"}]) != digest([{"a": "y"}])
    # a custom dataset's ragged arrays and lists: by their contents, not pointers; no error
    ragged = [{"parts": np.array([[1, 2], [3]], dtype=object), "mixed": [1, [2, 3]]}]
    assert digest(ragged) == digest([{"parts": np.array([[1, 2], [3]], dtype=object),
                                      "mixed": [1, [2, 3]]}])
    assert digest(ragged) != digest([{"parts": np.array([[1, 2], [4]], dtype=object),
                                      "mixed": [1, [2, 3]]}])
    # a mask file on one record only: which record has it counts
    pairs = [{"file_name": "/d/i/1.png", "mask_file": "/d/m/1.png"}, {"file_name": "/d/i/2.png"}]
    swapped = [{"file_name": "/d/i/1.png"}, {"file_name": "/d/m/1.png", "mask_file": "/d/i/2.png"}]
    assert digest(pairs, ("file_name", "mask_file")) != digest(swapped,
                                                              ("file_name", "mask_file"))


def test_the_folder_scan_keeps_the_order_of_sorted_paths(tmp_path: Path) -> None:
    """The scan lists strings (a million Path objects and their comparisons took seconds at
    every start of an ImageNet training); their order must stay Path's, part by part (as
    strings "a-c/x" sorts before "a/b": the images, and a resumed run's batches, would move)."""
    from resnet_detect.engine.data import file_paths_under, files_under
    names = ["a/b.jpg", "a-c/x.jpg", "a.b/y.png", "A/z.jpg", "a/b/c.jpg", "a/b-c.jpg",
             "a/b0/d.jpg", "é/1.jpg", "a/B.JPG", "10/2.jpg", "9/3.jpg"]
    for name in names:
        (tmp_path / "train/cls" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "train/cls" / name).write_bytes(b"")
    expected = sorted(tmp_path / "train/cls" / name for name in names)
    assert [str(p) for p in expected] != sorted(str(p) for p in expected)  # (a test of order)
    assert file_paths_under(tmp_path / "train/cls") == [str(p) for p in expected]
    assert files_under(tmp_path / "train/cls") == expected
    samples, classes = scan_image_folder(tmp_path / "train")
    assert samples == [(str(p), 0) for p in expected] and classes == ["cls"]
