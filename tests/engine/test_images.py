"""engine.data.predictor_image: what a Predictor refuses, each with the conversion that fixes it
(the advice is run here: what it gives is taken)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from resnet_detect.engine.data import predictor_image

ROOT = Path(__file__).resolve().parents[2]
RGB = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)


@pytest.mark.parametrize("given, advice, fixed", [
    (Image.fromarray(RGB).convert("RGBA"),
     "np.asarray(ImageOps.exif_transpose(image).convert('RGB'))",
     lambda image: np.asarray(ImageOps.exif_transpose(image).convert("RGB"))),
    (torch.from_numpy(RGB).permute(2, 0, 1), "image.permute(1, 2, 0).cpu().numpy()",
     lambda image: image.permute(1, 2, 0).cpu().numpy()),
    (RGB[..., 0], "cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)",
     lambda image: cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)),
    (np.dstack([RGB, RGB[..., :1]]), "np.ascontiguousarray(image[..., :3])",
     lambda image: np.ascontiguousarray(image[..., :3])),
    (RGB.transpose(2, 0, 1), "image.transpose(1, 2, 0)", lambda image: image.transpose(1, 2, 0)),
    (RGB / 255.0, "(image * 255).round().astype(np.uint8)",
     lambda image: (image * 255).round().astype(np.uint8)),
])
def test_a_refused_image_names_the_conversion_that_fixes_it(given, advice, fixed) -> None:
    with pytest.raises(ValueError, match="expects a non-empty \\(H, W, 3\\) uint8 RGB array or an "
                                         "image file's path, got") as refused:
        predictor_image(given)
    assert advice in str(refused.value)
    expected = np.dstack([RGB[..., 0]] * 3) if advice.startswith("cv2") else RGB  # gray
    np.testing.assert_array_equal(predictor_image(fixed(given)), expected)


def test_a_phone_photo_converted_as_advised_is_the_photo_as_shown(tmp_path: Path) -> None:
    """The advice for a PIL image dropped its EXIF orientation: a photo taken upright came
    out lying down, and its boxes were found on that picture."""
    from resnet_detect.engine.data import read_image

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90 degrees clockwise to show it
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "phone.jpg", exif=exif)
    photo = Image.open(tmp_path / "phone.jpg")
    with pytest.raises(ValueError, match=r"exif_transpose turns a phone photo as it is shown, "
                                         r"as read_image does\), or read the file with "
                                         r"read_image"):
        predictor_image(photo)
    fixed = np.asarray(ImageOps.exif_transpose(photo).convert("RGB"))
    assert fixed.shape == read_image(tmp_path / "phone.jpg").shape == (8, 6, 3)


@pytest.mark.parametrize("given", [[RGB, RGB], (RGB,), np.stack([RGB, RGB])])
def test_several_images_at_once_are_refused_saying_one_per_call(given) -> None:
    """A list (as mmdetection's inference_detector takes) or an (N, H, W, 3) batch was told to
    read a file, or given no advice."""
    with pytest.raises(ValueError, match="takes one image per call: call it on each image"):
        predictor_image(given)


def test_importing_the_library_leaves_the_processs_settings_to_the_user() -> None:
    """Importing it set one OpenCV thread for the whole process: a service's own resizing and
    blurring ran 1.5-2x slower on two cores, more on more. Loaders still set one (their
    workers, or the training threads, are the parallelism). Nor may it change torch's threads,
    the root logger or the stop signals' handlers."""
    script = (
        "import cv2, logging, signal, torch; cv2.setNumThreads(3); torch.set_num_threads(2); "
        "state = lambda: (cv2.getNumThreads(), torch.get_num_threads(), "
        "torch.get_num_interop_threads(), len(logging.getLogger().handlers), "
        "logging.getLogger().level, signal.getsignal(signal.SIGTERM), "
        "signal.getsignal(signal.SIGINT)); before = state(); "
        "import resnet_detect.detection, resnet_detect.segmentation; "
        "import resnet_detect.backbones; "
        "from resnet_detect.engine.data import build_test_loader; "
        "print(state() == before); build_test_loader([0]); print(cv2.getNumThreads())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.split() == ["True", "1"]


def test_the_tools_and_the_other_tasks_start_without_torchvisions_ops() -> None:
    """torchvision.ops imports torch._dynamo (1.6 s of a 4.5 s start on a Zen 3): every tool
    paid it before its first line, also for a classifier, a segmentor, --help or a refused
    config. Only the detectors (NMS, RoIAlign) and drop-path's training step need it."""
    script = textwrap.dedent("""
        import importlib.util, sys, torch
        for tool in ("train", "eval", "demo", "export", "pretrain"):
            spec = importlib.util.spec_from_file_location(tool, f"tools/{tool}.py")
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        import resnet_detect.segmentation, resnet_detect.backbones as backbones
        net = backbones.build_classifier("resnet18", 3, drop_path_rate=0.1).eval()
        net(torch.zeros(1, 3, 32, 32))
        print(sorted(m for m in sys.modules
                     if m.split(".")[0] == "torchvision" or m == "torch._dynamo"))
        """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.split() == ["[]"]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("channels", [1, 3])
def test_a_12_bit_image_in_a_16_bit_file_is_read_as_opencv_does_and_warned_of_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        suffix: str, channels: int) -> None:
    from resnet_detect.engine.data import images
    monkeypatch.setattr(images, "_said_dark", [])
    values = (np.arange(40 * 50).reshape(40, 50) * 2).astype(np.uint16) % 4096  # 12 bits
    pixels = values if channels == 1 else np.dstack([values, values // 2, values // 3])
    deep = tmp_path / f"deep{suffix}"
    cv2.imwrite(str(deep), pixels)
    caplog.set_level("WARNING")
    read = images.read_image(deep)
    np.testing.assert_array_equal(read, cv2.cvtColor(cv2.imread(str(deep)), cv2.COLOR_BGR2RGB))
    assert read.max() in (15, 16)  # OpenCV's high byte (PNG) or rounding (TIFF)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1
    assert warned[0].startswith(f"{deep}: 16 bits per sample, read as 8 bits")
    assert f"brightest pixel is {read.max()} of 255" in warned[0]
    cv2.imwrite(str(tmp_path / "other.png"), pixels)
    images.read_image(deep)
    images.read_image(tmp_path / "other.png")
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


def test_bright_deep_images_and_dark_8_bit_images_are_not_warned_of(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from resnet_detect.engine.data import images
    monkeypatch.setattr(images, "_said_dark", [])
    values = (np.arange(40 * 50).reshape(40, 50) * 2).astype(np.uint16) % 4096
    cv2.imwrite(str(tmp_path / "bright.png"), values * 16)
    cv2.imwrite(str(tmp_path / "bright.tif"), values * 16)
    cv2.imwrite(str(tmp_path / "dark.png"), (values // 256).astype(np.uint8))
    cv2.imwrite(str(tmp_path / "dark.jpg"), np.zeros((40, 50, 3), np.uint8))
    caplog.set_level("WARNING")
    for name in ("bright.png", "bright.tif", "dark.png", "dark.jpg"):
        images.read_image(tmp_path / name)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_dark_deep_image_past_pillows_decompression_bomb_limit_is_read_and_warned_of(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Pillow refuses to open an image over twice Image.MAX_IMAGE_PIXELS (179 MP by default:
    a large aerial TIFF), and warns over once; its header is read all the same (the limit is
    lowered here to make a small image such a one)."""
    import warnings

    from resnet_detect.engine.data import images
    monkeypatch.setattr(images, "_said_dark", [])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    path = tmp_path / "aerial.tif"
    cv2.imwrite(str(path), (np.arange(40 * 50).reshape(40, 50) % 4096).astype(np.uint16))
    caplog.set_level("WARNING")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read = images.read_image(path)
        assert images.image_size(path) == (40, 50)
    assert read.shape == (40, 50, 3)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and warned[0].startswith(f"{path}: 16 bits per sample")
    assert Image.MAX_IMAGE_PIXELS == 500


def test_a_float_tiff_is_named_as_such_and_a_damaged_png_is_not(tmp_path) -> None:
    from PIL import Image

    from resnet_detect.engine.data.images import UnreadableImageError, read_image

    Image.fromarray(np.random.default_rng(0).random((20, 30), dtype=np.float32), mode="F").save(
        tmp_path / "float.tif")
    with pytest.raises(UnreadableImageError, match=r"float.tif: cannot be decoded \(a TIFF of "
                                                   r"32-bit float samples, which OpenCV does not "
                                                   r"read: convert it to 8 bits, e.g. a PNG\)$"):
        read_image(tmp_path / "float.tif")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:60])
    with pytest.raises(UnreadableImageError, match=r"cut.png: cannot be decoded$"):
        read_image(tmp_path / "cut.png")


def test_a_damaged_files_decoders_say_nothing_before_the_warning_naming_it(
        tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """A cut TIFF: Pillow's header read warned "Corrupt EXIF data" (Python warnings), and in
    a loader worker OpenCV printed its own "TIFFReadDirectory" lines, naming no file, before
    the warning that names it and why."""
    import warnings

    from resnet_detect.engine.data import build_test_loader
    from resnet_detect.engine.data.images import UnreadableImageError, read_image

    ok, encoded = cv2.imencode(".tif", np.random.default_rng(0).integers(
        0, 255, (64, 64, 3), dtype=np.uint8))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(encoded.tobytes()[:len(encoded) // 2])
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        with pytest.raises(UnreadableImageError, match=r"cut.tif: cannot be decoded$"):
            read_image(cut)
    assert [str(w.message) for w in said] == []

    class Reads(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int) -> str:
            try:
                read_image(cut)
            except UnreadableImageError as err:
                return str(err)
            return "read"
    capfd.readouterr()
    assert [batch for batch in build_test_loader(Reads(), num_workers=1)] == [
        [f"{cut}: cannot be decoded"]]
    assert "TIFF" not in capfd.readouterr().err
    # nor in a tool's own process (data.num_workers=0, the demo, an int8 calibration);
    # a library caller's OpenCV log is left as it was
    from resnet_detect.engine.cli import run_tool
    before = cv2.utils.logging.getLogLevel()
    assert before != cv2.utils.logging.LOG_LEVEL_SILENT
    said = []
    run_tool(lambda argv: said.append(Reads()[0]))
    assert said == [f"{cut}: cannot be decoded"]
    assert "TIFF" not in capfd.readouterr().err
    assert cv2.utils.logging.getLogLevel() == before
    Reads()[0]
    assert "TIFFReadDirectory" in capfd.readouterr().err  # (what the tools keep quiet)


def _png_chunks(data: bytes) -> list[bytes]:
    """A PNG's chunks, each whole (length, type, data, CRC)."""
    chunks, at = [], 8
    while at < len(data):
        end = at + 12 + int.from_bytes(data[at:at + 4], "big")
        chunks.append(data[at:end])
        at = end
    return chunks


@pytest.mark.parametrize("exif_after_pixels", [False, True])
def test_a_pngs_orientation_is_read_before_or_after_its_pixels(
        tmp_path: Path, exif_after_pixels: bool) -> None:
    """An eXIf chunk after the pixels (valid PNG; OpenCV applies it) was missed by the header
    read: the size checks passed, then the turned image was skipped as of another size, or a
    segmentation run stopped at its mask."""
    from resnet_detect.engine.data import images
    path = tmp_path / "turned.png"
    exif = Image.Exif()
    exif[0x0112] = 6  # turned by 90 degrees
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(path, exif=exif)
    chunks = _png_chunks(path.read_bytes())
    kinds = [c[4:8] for c in chunks]
    assert kinds.index(b"eXIf") < kinds.index(b"IDAT")  # (where Pillow writes it)
    if exif_after_pixels:
        moved = chunks.pop(kinds.index(b"eXIf"))
        chunks.insert(len(chunks) - 1, moved)  # just before IEND
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(chunks))
    assert images.read_image(path).shape == (60, 40, 3)
    assert images.image_size(path) == (60, 40)


def test_a_pngs_chunks_are_stepped_over_and_a_damaged_orientation_is_no_orientation(
        tmp_path: Path) -> None:
    """The walk over a PNG's chunks read half the file through the read buffer (the size
    checks read every image's header at each start); an eXIf chunk cut short after the pixels
    raised struct.error out of the size checks and read_image, where a damaged image is
    skipped."""
    from resnet_detect.engine.data import images
    path = tmp_path / "large.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), np.uint8))
    assert path.stat().st_size > 3_000_000

    def bytes_read() -> int:
        io = Path("/proc/self/io").read_text(encoding="ascii")
        return int(next(line for line in io.splitlines() if line.startswith("rchar")).split()[1])
    assert images.image_size(path) == (1024, 1024)  # (Pillow's modules imported first)
    before = bytes_read()
    assert images.image_size(path) == (1024, 1024)
    assert bytes_read() - before < 100_000
    chunks = _png_chunks(path.read_bytes())
    cut = b"MM\x00*\x00\x00\x00"  # an EXIF block cut inside its header
    damaged = (b"\x89PNG\r\n\x1a\n" + b"".join(chunks[:-1]) + len(cut).to_bytes(4, "big")
               + b"eXIf" + cut + b"\x00" * 4 + chunks[-1])
    path.write_bytes(damaged)
    assert images.image_size(path) == (1024, 1024)
    assert images.read_image(path).shape == (1024, 1024, 3)
