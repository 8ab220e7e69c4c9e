"""Predictor on own checkpoints (provenance), input checks; test-time inference."""
import logging
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from resnet_detect.backbones import save_checkpoint
from resnet_detect.engine.config import ConfigError
from resnet_detect.segmentation import (Predictor, SemanticSegmentor, TTAInference, build_model,
                                        provenance_from_config)
from resnet_detect.segmentation.heads import SemSegHead
from resnet_detect.segmentation.inference import capped_size, resized_argmax, window_starts


def test_predictor_uses_checkpoint_provenance(tmp_path, small_config, caplog):
    torch.manual_seed(0)
    cfg = small_config("deeplabv3", num_classes=3, pixel_mean=[100.0, 110.0, 120.0],
                       pixel_std=[50.0, 51.0, 52.0])
    model = build_model(cfg).eval()
    names = ["background", "cat", "dog"]
    provenance = provenance_from_config(cfg, names)
    assert provenance["arch"] == "deeplabv3_resnet18" and provenance["pixel_std"] == [50, 51, 52]
    path = tmp_path / "model_final.pth"
    save_checkpoint(path, model.state_dict(), provenance)

    plain = small_config("deeplabv3", num_classes=None)  # default mean/std, classes unknown
    predictor = Predictor(plain, weights=path)
    assert predictor.class_names == names
    assert predictor.model.pixel_mean.flatten().tolist() == [100.0, 110.0, 120.0]
    image = np.random.default_rng(0).integers(0, 256, (45, 67, 3), dtype=np.uint8)
    result = predictor(image)
    with torch.no_grad():
        expected = model([torch.from_numpy(image.transpose(2, 0, 1).copy())])[0]["mask"]
    assert result["mask"].shape == (45, 67) and result["mask"].dtype == np.int64
    np.testing.assert_array_equal(result["mask"], expected.numpy())
    # the config the checkpoint records; device="auto" as the tools take it
    from_checkpoint_alone = Predictor(weights=path, device="auto")
    np.testing.assert_array_equal(from_checkpoint_alone(image)["mask"], expected.numpy())
    assert "records a config that tests" not in caplog.text  # the same test section: quiet
    with caplog.at_level(logging.WARNING):
        Predictor(plain, weights=path, overrides=["test.scales=[0.5]", "test.flip=true"])
    assert f"{path} records a config that tests with test.scales=[1.0] test.flip=False " \
           "test.window=None test.max_size=None (its evaluations in training); this asks for " \
           "[0.5] True None None" in caplog.text
    # a misspelt key is named as the recorded config's, or as the caller's where one is given
    recorded = {**provenance, "config": {**provenance["config"], "bogus": 1}}
    save_checkpoint(tmp_path / "misspelt.pth", model.state_dict(), recorded)
    with pytest.raises(ConfigError, match=r"unknown config key 'bogus' in the checkpoint's "
                                          r"config"):
        Predictor(weights=tmp_path / "misspelt.pth")
    with pytest.raises(ConfigError, match=r"unknown config key 'bogus' in the config given to "
                                          r"Predictor"):
        Predictor(recorded["config"], weights=path)
    # data.class_names beside weights that name their classes: were ignored without a word,
    # whatever their number
    with pytest.raises(ConfigError, match=r"the weights .*model_final.pth have 3 classes, "
                                          r"data.class_names names 2"):
        Predictor(weights=path, overrides=["data.class_names=[a,b]"])
    with caplog.at_level(logging.WARNING):
        renamed = Predictor(weights=path, overrides=["data.class_names=[a,b,c]"])
    assert renamed.class_names == names
    assert (f"the weights {path} name their classes {names}: predictions carry those names, "
            f"not data.class_names'") in caplog.text
    # the colours a training records: drawn under a config without its own (a repository
    # config drew automatic colours for the .pth, the recorded ones for its export)
    colours = [[0, 0, 0], [200, 10, 10], [10, 200, 10]]
    cfg["data"]["palette"] = colours
    save_checkpoint(path, model.state_dict(), provenance_from_config(cfg, names))
    assert Predictor(plain, weights=path).palette == colours
    assert Predictor(plain, weights=path, overrides=["data.palette=[[1,2,3],[4,5,6],[7,8,9]]"]
                     ).palette == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_predictor_without_config_needs_an_own_checkpoint(tmp_path, small_config):
    """Weights that record no config, given none: the run's config.yaml beside them is named
    (a checkpoint written before checkpoints recorded their config was told "only this
    project's checkpoints do", which it is)."""
    path = tmp_path / "bare.pth"
    torch.save(build_model(small_config("fcn")).state_dict(), path)
    with pytest.raises(ValueError, match=rf"a config is needed: the weights {path} record none "
                                         r"\(other projects' weights do not, nor this "
                                         r"project's checkpoints before 2026-12-02\): give the "
                                         r"config they were trained with$"):
        Predictor(None, weights=path)
    (tmp_path / "config.yaml").write_text("task: sem_seg\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"\): give {tmp_path / 'config.yaml'} \(its run's\)$"):
        Predictor(None, weights=path)


def _random_weights(cfg, path):
    """`path`: a checkpoint of `cfg`'s model with its random start."""
    names = [f"c{i}" for i in range(cfg["model"]["num_classes"])]
    save_checkpoint(path, build_model(cfg).state_dict(), provenance_from_config(cfg, names))
    return path


def test_predictor_needs_weights_and_leaves_the_random_stream_alone(tmp_path, small_config):
    """Without weights it predicted with a random head (and, from model.backbone.weights, an
    ImageNet backbone), plausible-looking maps; detection's Predictor refuses."""
    with pytest.raises(ConfigError, match=r"no segmenter weights: pass weights=PATH \(or set "
                                          r"model.weights\)"):
        Predictor(small_config("fcn"), overrides=["model.num_classes=4"])
    path = _random_weights(small_config("fcn", num_classes=4), tmp_path / "w.pth")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Predictor(small_config("fcn", num_classes=4), weights=path)
    assert torch.equal(torch.rand(3), expected)  # building it drew its random start
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    expected = Predictor(small_config("fcn", num_classes=4), weights=path)(image)["mask"]
    torch.set_default_dtype(torch.float64)  # a scientific caller's: it built float64 weights
    try:
        got = Predictor(small_config("fcn", num_classes=4), weights=path)(image)["mask"]
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(torch.float32)
    np.testing.assert_array_equal(got, expected)


def test_predictor_rejects_bad_images(tmp_path, small_config):
    path = _random_weights(small_config("fcn", num_classes=4), tmp_path / "w.pth")
    predictor = Predictor(small_config("fcn", num_classes=4), weights=path)
    assert predictor.model.num_classes == 4
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 RGB array or an image file's path, "
                                         r"got uint8 array of shape"):
        predictor(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="got float32 array"):
        predictor(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"non-empty .* got uint8 array of shape \(0, 10, 3\)"):
        predictor(np.zeros((0, 10, 3), dtype=np.uint8))


class PointwiseHead(SemSegHead):
    """1x1 conv on the image itself: windows and flips cannot change its output."""

    in_features = ("res5",)

    def __init__(self):
        super().__init__(num_classes=4)
        self.conv = nn.Conv2d(3, 4, 1)

    def layers(self, features):
        return self.conv(features["res5"])


class Identity(nn.Module):
    def forward(self, x):
        return {"res5": x}


def _pointwise_model():
    torch.manual_seed(0)
    return SemanticSegmentor(backbone=Identity(), head=PointwiseHead(), pixel_mean=[0, 0, 0],
                             pixel_std=[255.0, 255.0, 255.0]).eval()


def test_window_starts():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(10, 4, 4) == [0, 4, 6]  # the last window ends flush with the image
    assert window_starts(3, 4, 2) == [0]


def test_sliding_window_and_flip_match_the_whole_image_for_a_pointwise_model():
    model = _pointwise_model()
    image = torch.randint(0, 256, (3, 23, 31), dtype=torch.uint8)
    with torch.no_grad():
        whole = model([image])[0]["sem_seg"].softmax(0)
    windowed = TTAInference(window=(8, 10), stride=(5, 7), flip=True)
    assert not windowed.is_plain
    torch.testing.assert_close(windowed(model, image), whole, rtol=0, atol=1e-6)


def test_multi_scale_probabilities_are_averaged():
    model = _pointwise_model()
    image = torch.full((3, 20, 30), 77, dtype=torch.uint8)  # constant: every scale agrees
    with torch.no_grad():
        whole = model([image])[0]["sem_seg"].softmax(0)
    probs = TTAInference(scales=(0.5, 1.0, 1.75), flip=True)(model, image)
    assert probs.shape == (4, 20, 30)
    torch.testing.assert_close(probs, whole, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="scales must be positive"):
        TTAInference(scales=(0.0,))


def test_max_size_scales_long_images_down_first_and_answers_at_their_size():
    """The model sees the capped image (times each scale); the probabilities are the logits
    brought back to the image's size."""
    model = _pointwise_model()
    seen = []
    model.backbone.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[-2:]))
    image = torch.randint(0, 256, (3, 40, 100), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    capped = TTAInference(max_size=50, scales=(1.0, 0.5))
    assert not capped.is_plain and capped.single_scale is None
    probs = capped(model, image)
    assert [tuple(s) for s in seen] == [(20, 50), (10, 25)]
    expected = 0
    with torch.no_grad():
        for size in ((20, 50), (10, 25)):
            small = torch.nn.functional.interpolate(image[None].float(), size=size,
                                                    mode="bilinear", align_corners=False)
            logits = torch.nn.functional.interpolate(model.logits(small / 255.0)["sem_seg"],
                                                     size=(40, 100), mode="bilinear",
                                                     align_corners=False)
            expected = expected + logits[0].softmax(0) / 2
    assert probs.shape == (4, 40, 100)
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-6)

    seen.clear()  # an image that fits runs at its size, as without the cap
    fits = image[:, :30, :50]
    probs = TTAInference(max_size=50)(model, fits)
    assert [tuple(s) for s in seen] == [(30, 50)]
    with torch.no_grad():
        whole = model([fits])[0]["sem_seg"].softmax(0)
    torch.testing.assert_close(probs, whole, rtol=0, atol=1e-6)
    # each side rounded half up in integers: 72.5 -> 73 (float rounding in a graph differed)
    assert capped_size(136, 272, 145) == (73, 145) and capped_size(145, 60, 145) == (145, 60)
    # a scale's sides too, as mmseg rescales (int(side * scale + 0.5)): 38.5 was 38 (Python's
    # round, half to even), 80 of 7777 pixels another class than mmseg's in a trial
    seen.clear()
    TTAInference(scales=(0.5, 0.625))(model, torch.zeros((3, 77, 93), dtype=torch.uint8))
    assert [tuple(s) for s in seen] == [(39, 47), (48, 58)]
    for bad in (0, 12.5, True, "800"):
        with pytest.raises(ValueError, match="max_size must be a positive number"):
            TTAInference(max_size=bad)


@pytest.mark.parametrize("size", [(97, 61), (13, 17), (40, 30)])
def test_resized_argmax_is_the_argmax_of_the_resized_logits(size):
    """Class by class (two (H, W) maps in memory, not K): the same classes, ties (integer
    logits) to the first as torch.argmax gives them."""
    generator = torch.Generator().manual_seed(0)
    for logits in (torch.randn(7, 20, 15, generator=generator),
                   torch.randint(0, 3, (7, 20, 15), generator=generator).float()):
        expected = torch.nn.functional.interpolate(
            logits[None], size=size, mode="bilinear", align_corners=False)[0].argmax(dim=0)
        assert torch.equal(resized_argmax(logits, size), expected)
    assert torch.equal(resized_argmax(logits, (20, 15)), logits.argmax(dim=0))


def test_one_capped_view_classes_are_its_resized_logits_argmax():
    """What the Predictor and the evaluation answer with one (capped) scale: the argmax of
    the logits brought to the image's size (torchvision's and the ONNX graph's), made
    without a (K, H, W) map at that size; with a flip, the averaged probabilities'."""
    model = _pointwise_model()
    image = torch.randint(0, 256, (3, 40, 100), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        small = torch.nn.functional.interpolate(image[None].float(), size=(20, 50),
                                                mode="bilinear", align_corners=False)
        logits = torch.nn.functional.interpolate(model.logits(small / 255.0)["sem_seg"],
                                                 size=(40, 100), mode="bilinear",
                                                 align_corners=False)[0]
    classes = TTAInference(max_size=50).class_map(model, image)
    assert classes.dtype == torch.int64 and len(classes.unique()) >= 2
    assert torch.equal(classes, logits.argmax(dim=0))
    flipped = TTAInference(max_size=50, flip=True)
    assert torch.equal(flipped.class_map(model, image), flipped(model, image).argmax(dim=0))


def test_predictor_takes_test_max_size_from_the_config(tmp_path, small_config):
    torch.manual_seed(0)
    path = _random_weights(small_config("deeplabv3", num_classes=3), tmp_path / "w.pth")
    predictor = Predictor(small_config("deeplabv3", num_classes=3), weights=path,
                          overrides=["test.max_size=32"])
    assert predictor.tta.max_size == 32
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert predictor(image)["mask"].shape == (48, 64)
    with pytest.raises(ValueError, match="max_size"):
        Predictor(small_config("deeplabv3", num_classes=3), weights=path,
                  overrides=["test.max_size=-3"])


def test_a_read_only_image_is_segmented_without_a_warning(tmp_path, small_config):
    """A read-only (H, W, 3) array whose channels-first view is contiguous made torch warn
    that it takes a non-writable array."""
    path = _random_weights(small_config("fcn", num_classes=4), tmp_path / "w.pth")
    predictor = Predictor(small_config("fcn", num_classes=4), weights=path)
    image = np.random.default_rng(0).integers(0, 256, (3, 20, 30), dtype=np.uint8)
    image = image.transpose(1, 2, 0)
    image.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask = predictor(image)["mask"]
    np.testing.assert_array_equal(mask, predictor(image.copy())["mask"])


def test_bgr_arrays_and_image_paths_give_the_rgb_arrays_classes(tmp_path, small_config):
    """mmsegmentation's inference_model takes OpenCV's BGR or a path: `input_format="BGR"`
    and a path give the RGB array's class map; a BGR array given as RGB does not."""
    import cv2

    cfg = small_config("fcn", num_classes=4)
    path = _random_weights(cfg, tmp_path / "w.pth")
    rgb = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), rgb[..., ::-1])
    bgr = cv2.imread(str(tmp_path / "a.png"))
    as_rgb = Predictor(cfg, weights=path)
    as_bgr = Predictor(cfg, weights=path, input_format="BGR")
    expected = as_rgb(rgb)["mask"]
    for got in (as_bgr(bgr), as_rgb(tmp_path / "a.png"), as_bgr(str(tmp_path / "a.png")),
                *as_bgr.predict_batch([bgr, tmp_path / "a.png"])):
        np.testing.assert_array_equal(got["mask"] if isinstance(got, dict) else got, expected)
    assert not np.array_equal(as_rgb(bgr)["mask"], expected)
    with pytest.raises(ValueError, match="input_format must be one of RGB, BGR, got 'rgb'"):
        Predictor(cfg, weights=path, input_format="rgb")


def test_each_cpu_prediction_hands_its_freed_memory_back_unless_told_not_to(
        tmp_path, small_config, monkeypatch):
    calls = []
    monkeypatch.setattr("resnet_detect.segmentation.predictor.release_free_memory",
                        lambda: calls.append(1))
    path = _random_weights(small_config("fcn", num_classes=4), tmp_path / "w.pth")
    image = np.zeros((20, 30, 3), np.uint8)
    Predictor(small_config("fcn", num_classes=4), weights=path)(image)
    assert calls == [1]
    Predictor(small_config("fcn", num_classes=4), weights=path, release_memory=False)(image)
    assert calls == [1]


def test_a_batch_gives_each_images_own_classes(tmp_path, small_config, monkeypatch):
    calls = []
    monkeypatch.setattr("resnet_detect.segmentation.predictor.release_free_memory",
                        lambda: calls.append(1))
    cfg = small_config("deeplabv3", num_classes=4)
    torch.manual_seed(0)  # weights that predict several classes, whatever ran before
    path = _random_weights(cfg, tmp_path / "w.pth")
    predictor = Predictor(cfg, weights=path)
    rng = np.random.default_rng(0)
    same = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(3)]
    batch = predictor.predict_batch(same)
    assert calls == [1]  # once per batch
    for image, out in zip(same, batch, strict=True):
        alone = predictor(image)["mask"]
        assert out["mask"].shape == (40, 56) and (out["mask"] != alone).mean() < 1e-3
        assert len(np.unique(alone)) > 1
    # mixed sizes: a batch per size, each image's own classes (padded to the largest, many
    # of a small image's pixels changed)
    sizes = [(40, 56), (33, 70), (64, 20), (33, 70), (96, 128)]
    images = [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in sizes]
    mixed = predictor.predict_batch(images)
    assert [out["mask"].shape for out in mixed] == sizes
    for image, out in zip(images, mixed, strict=True):
        assert (out["mask"] != predictor(image)["mask"]).mean() < 1e-3
    assert len(predictor.predict_batch(np.stack(same[:2]))) == 2  # (N, H, W, 3): N images
    assert len(predictor.predict_batch(image for image in same[:2])) == 2
    assert predictor.predict_batch([]) == []
    with pytest.raises(ValueError, match=r"predict_batch takes a list of images .*call the "
                                         r"Predictor itself for one image"):
        predictor.predict_batch(same[0])
    for wrong in (None, 5):  # (a bare TypeError: "'NoneType' object is not iterable")
        with pytest.raises(ValueError, match=rf"predict_batch takes a list of images \(or an "
                                             rf"\(N, H, W, 3\) array\), got "
                                             rf"{type(wrong).__name__}$"):
            predictor.predict_batch(wrong)

    def loading():  # a TypeError of the caller's own generator is its own, not ours
        yield same[0]
        raise TypeError("the caller's own")
    with pytest.raises(TypeError, match="the caller's own"):
        predictor.predict_batch(loading())
    with pytest.raises(ValueError, match=r"images\[1\]: .*\(H, W, 3\) uint8 RGB array or an "
                                         r"image file's path, got float32"):
        predictor.predict_batch([same[0], same[1].astype(np.float32)])
    flipped = Predictor(cfg, weights=path, overrides=["test.flip=true"])
    for image, out in zip(same, flipped.predict_batch(same), strict=True):  # one by one
        np.testing.assert_array_equal(out["mask"], flipped(image)["mask"])


def test_an_export_without_a_config_names_the_overrides_it_does_not_follow(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Without a config, the overrides were dropped without a word (with one, compared)."""
    from resnet_detect.segmentation import predictor

    class ExportedGraph:
        class_names = ["background", "cat"]
        test_scale, test_max_size = 0.5, None
        metadata: dict = {}

        def __init__(self, path: object, device: object) -> None:
            pass

    monkeypatch.setattr(predictor, "OnnxSegmentor", ExportedGraph)
    with caplog.at_level(logging.WARNING):
        Predictor(None, weights="x.onnx")  # the defaults (scale 1.0) are not the user's
        assert not caplog.text
        Predictor(None, weights="x.onnx", overrides=[
            "test.scales=[1.0]", "test.max_size=64", "model.num_classes=3"])
    assert ("the exported graph x.onnx runs as it was exported, not as the config says: "
            "test.scales [0.5] (config: [1.0]); test.max_size null (config: 64); "
            "model.num_classes not applied; export again") in caplog.text
    with pytest.raises(ValueError, match=r"x.onnx runs one test scale, 0.5, .* the config asks "
                                         r"for test.scales=\[0.5\] test.flip=true.* \(an export "
                                         r"runs one scale without flip or windows; give the "
                                         r"\.pth for test-time augmentation\)$"):
        Predictor(None, weights="x.onnx", overrides=["test.scales=[0.5]", "test.flip=true"])


def test_test_compile_compiles_backbone_and_head_but_not_for_an_export(tmp_path, small_config):
    """test.compile: the backbone and the head compiled, the same class maps; an export
    traces the eager model (its graph gives the PyTorch maps) whatever the config says."""
    from omegaconf import OmegaConf

    from resnet_detect.segmentation.export import OnnxSegmentor
    from resnet_detect.segmentation.training import export_model
    cfg = small_config("deeplabv3", num_classes=4)
    path = _random_weights(cfg, tmp_path / "w.pth")
    eager = Predictor(cfg, weights=path)
    compiled = Predictor(cfg, weights=path, overrides=["test.compile=aot_eager"])
    assert compiled.model.backbone._compiled_call_impl is not None
    assert compiled.model.head._compiled_call_impl is not None
    images = [np.random.default_rng(i).integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8)
              for i in range(2)]
    for image in images:
        np.testing.assert_array_equal(compiled(image)["mask"], eager(image)["mask"])
    config = tmp_path / "config.yaml"
    OmegaConf.save(OmegaConf.create(cfg), config)
    export_model(str(config), str(path), tmp_path / "export", ["test.compile=aot_eager"])
    graph = OnnxSegmentor(tmp_path / "export")
    for image in images:
        got = graph([torch.from_numpy(image.transpose(2, 0, 1).copy())])[0]["mask"]
        assert (got.numpy() != eager(image)["mask"]).mean() <= 1e-3


def test_a_predictor_without_config_or_weights_says_what_it_needs() -> None:
    """Predictor(None) was "TypeError: expected str, bytes or os.PathLike object, not
    NoneType" (the detector's says what is missing)."""
    with pytest.raises(ConfigError, match=r"no segmenter weights: pass weights=PATH"):
        Predictor(None)
