"""Residual-learning studies: path sampling, lesions, responses, path gradients, study data."""
import math
import pickle

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resnet_detect import backbones
from resnet_detect.backbones.studies import (KOfNPathSampler, PathGradients, apply_path_sampling,
                                             branch_output_module, deleted_blocks, drop_path_rates,
                                             is_downsampling, layer_response_std,
                                             path_length_distribution, random_lesions,
                                             response_layers, sample_subsets, single_block_lesions)
from resnet_detect.backbones.studies.data import (ClassificationSplit, load_cifar_batches,
                                                  load_splits, SplitDataset, random_crop_flip)
from resnet_detect.backbones.studies.training import Recipe, accuracy, train_classifier
from resnet_detect.backbones.data import scan_image_folder


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and the CI machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_classifier(seed=0, depth=20, **options):
    """A CIFAR ResNet (depth 20: 9 blocks; depth 8: 3 blocks) with random BN statistics, so
    evaluation mode is not the identity normalization."""
    torch.manual_seed(seed)
    model = backbones.build_classifier("cifar_resnet20", 3, depth=depth, **options)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def images(n=4, size=8, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- path-length distribution

def test_path_length_distribution_small_n_exact():
    assert path_length_distribution(4) == [1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16]
    assert path_length_distribution(0) == [1.0]


@pytest.mark.parametrize("n", [1, 9, 27, 54])
def test_path_length_distribution_sums_to_one_and_is_binomial(n):
    dist = path_length_distribution(n)
    assert len(dist) == n + 1
    assert math.isclose(sum(dist), 1.0, rel_tol=0, abs_tol=1e-12)
    binomial = np.ones(1)  # each block on or off with probability 1/2: n coin flips
    for _ in range(n):
        binomial = np.convolve(binomial, [0.5, 0.5])
    np.testing.assert_allclose(dist, binomial, rtol=1e-10, atol=0)


# ---------------------------------------------------------------- subsets and branch module

def test_sample_subsets_enumerates_when_few_and_samples_otherwise():
    assert sample_subsets(4, 2, 10) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert sample_subsets(5, 0, 3) == [()]
    drawn = sample_subsets(9, 4, 7, torch.Generator().manual_seed(0))
    assert len(drawn) == 7
    assert all(len(s) == 4 == len(set(s)) and list(s) == sorted(s) and max(s) < 9
               for s in drawn)
    # 8 of the 9 single blocks: drawn with replacement, the seed gave 5 distinct ones
    singles = sample_subsets(9, 1, 8, torch.Generator().manual_seed(0))
    assert len(set(singles)) == 8
    with pytest.raises(ValueError, match="k=5"):
        sample_subsets(4, 5, 1)


@pytest.mark.parametrize("name,expected", [("cifar_resnet20", "norm2"), ("resnet50", "norm3")])
def test_branch_output_module_output_is_block_branch(name, expected):
    model = backbones.build_classifier(name, 3).eval()
    block = model.backbone.blocks()[1]
    module = branch_output_module(block)
    assert module is getattr(block, expected)
    seen = []
    handle = module.register_forward_hook(lambda m, a, out: seen.append(out))
    x = torch.randn(1, block.in_channels, 8, 8)
    with torch.no_grad():
        direct = block.branch(x)
    handle.remove()
    assert torch.equal(seen[0], direct)


# ---------------------------------------------------------------- stochastic depth

@pytest.mark.parametrize("schedule", ["linear", "uniform"])
def test_stochastic_depth_rate_zero_is_exactly_the_plain_forward(schedule):
    reference, sampled = tiny_classifier().train(), tiny_classifier().train()
    assert apply_path_sampling(sampled.backbone, mode="drop_path", rate=0.0,
                               schedule=schedule) is None
    x = images()
    torch.manual_seed(3)
    assert torch.equal(sampled(x), reference(x))


def test_stochastic_depth_drops_in_training_only():
    reference, sampled = tiny_classifier(), tiny_classifier()
    apply_path_sampling(sampled.backbone, mode="drop_path", rate=0.5, schedule="uniform")
    assert [b.drop_path_rate for b in sampled.backbone.blocks()] == [0.5] * 9
    x = images()
    with torch.no_grad():
        assert torch.equal(sampled(x), reference(x))  # evaluation: every branch, unscaled
        torch.manual_seed(3)
        assert not torch.allclose(sampled.train()(x), reference.train()(x))


def test_drop_path_schedules():
    assert drop_path_rates(5, 0.4, "uniform") == [0.4] * 5
    np.testing.assert_allclose(drop_path_rates(5, 0.4, "linear"), [0.0, 0.1, 0.2, 0.3, 0.4])
    model = tiny_classifier()
    apply_path_sampling(model.backbone, mode="drop_path", rate=0.2, schedule="linear")
    built = backbones.build_classifier("cifar_resnet20", 3, drop_path_rate=0.2)
    assert [b.drop_path_rate for b in model.backbone.blocks()] == [
        b.drop_path_rate for b in built.backbone.blocks()]
    with pytest.raises(ValueError, match="schedule"):
        drop_path_rates(3, 0.1, "cosine")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        drop_path_rates(3, 1.0, "uniform")


def test_path_sampling_rejects_plain_nets_and_bad_settings():
    plain = backbones.build_classifier("plain_cifar_resnet20", 3)
    with pytest.raises(ValueError, match="plain"):
        apply_path_sampling(plain.backbone, mode="k_of_n", k=3)
    residual = backbones.build_classifier("cifar_resnet20", 3)
    with pytest.raises(ValueError, match=r"k must be in 1\.\.9"):
        apply_path_sampling(residual.backbone, mode="k_of_n", k=10)
    with pytest.raises(ValueError, match="mode"):
        apply_path_sampling(residual.backbone, mode="dropout")
    assert apply_path_sampling(residual.backbone, mode="none", rate=0.9) is None


# ---------------------------------------------------------------- k of n

def count_branch_calls(model):
    calls = []
    handles = [b.conv1.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
               for i, b in enumerate(model.backbone.blocks())]
    return calls, handles


def test_k_of_n_runs_exactly_k_branches_per_training_batch():
    model = tiny_classifier().train()
    sampler = apply_path_sampling(model.backbone, mode="k_of_n", k=3,
                                  generator=torch.Generator().manual_seed(0))
    assert isinstance(sampler, KOfNPathSampler)
    calls, handles = count_branch_calls(model)
    active_sets = set()
    for step in range(6):
        calls.clear()
        model(images(seed=step))
        assert len(calls) == 3 and len(set(calls)) == 3
        assert tuple(sorted(calls)) == sampler.active
        active_sets.add(sampler.active)
        assert not any(b.skip_branch for b in model.backbone.blocks())  # restored
    assert len(active_sets) > 1
    calls.clear()
    with torch.no_grad():
        model.eval()(images())
    assert sorted(calls) == list(range(9))  # evaluation runs every branch
    for handle in handles:
        handle.remove()


def test_k_of_n_rescales_kept_branches_by_n_over_k():
    model = tiny_classifier().train()
    sampler = apply_path_sampling(model.backbone, mode="k_of_n", k=3,
                                  generator=torch.Generator().manual_seed(1))
    blocks = model.backbone.blocks()
    seen = {}
    handles = [b.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, (a[0], o)))
               for i, b in enumerate(blocks)]
    model(images())
    for handle in handles:
        handle.remove()
    sampler.remove()
    with torch.no_grad():
        for i, block in enumerate(blocks):
            x, out = seen[i]
            if i in sampler.active:
                expected = F.relu(block.shortcut(x) + block.branch(x) * 3.0)
            else:
                expected = F.relu(block.shortcut(x))
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_k_of_n_with_k_equal_n_is_the_plain_forward():
    reference, sampled = tiny_classifier().train(), tiny_classifier().train()
    apply_path_sampling(sampled.backbone, mode="k_of_n", k=9)
    x = images()
    assert torch.equal(sampled(x), reference(x))


# ---------------------------------------------------------------- lesion

def test_lesion_of_one_block_keeps_forward_valid_and_changes_output():
    model = tiny_classifier()
    blocks = model.backbone.blocks()
    x = images()
    seen = {}
    handle = blocks[4].register_forward_hook(lambda m, a, o: seen.update(x=a[0], out=o))
    with torch.no_grad():
        intact = model(x)
        with deleted_blocks(blocks, [4]):
            lesioned = model(x)
    handle.remove()
    assert lesioned.shape == intact.shape == (4, 3)
    assert torch.isfinite(lesioned).all()
    assert (lesioned - intact).abs().max() > 1e-3
    # a deleted identity-shortcut block passes its (non-negative) input through unchanged
    assert not is_downsampling(blocks[4])
    assert torch.equal(seen["out"], seen["x"])
    assert not any(b.skip_branch for b in blocks)


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_deleting_every_branch_leaves_the_stem_and_downsampling_path(shortcut):
    model = tiny_classifier(shortcut=shortcut)
    backbone = model.backbone
    x = images()
    with torch.no_grad(), deleted_blocks(backbone.blocks(), range(9)):
        out = model(x)
        # hand-built: stem, then at res3 and res4 only the downsampling shortcut
        h = F.relu(backbone.stem.norm(backbone.stem.conv(x)))
        for stage in ("res3", "res4"):
            first = getattr(backbone, stage)[0]
            if shortcut == "A":
                h = h[:, :, ::2, ::2]
                h = torch.cat([h, torch.zeros_like(h)], dim=1)  # 16 -> 32 -> 64 channels
            else:
                conv, norm = first.shortcut[0], first.shortcut[1]
                assert conv.stride == (2, 2) and conv.kernel_size == (1, 1)
                h = F.relu(norm(conv(h)))
        assert h.shape == (4, 64, 2, 2)
        expected = model.fc(h.mean(dim=(2, 3)))
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_single_and_random_lesions_match_manual_deletions():
    model = tiny_classifier()
    backbone = model.backbone
    x, labels = images(n=12, seed=5), torch.arange(12) % 3
    single = single_block_lesions(model, backbone, x, labels, batch_size=5)
    for i in (0, 3, 6):
        backbone.blocks()[i].skip_branch = True
        with torch.no_grad():
            manual = 100.0 * (model(x).argmax(1) == labels).float().mean().item()
        backbone.blocks()[i].skip_branch = False
        assert single[i] == pytest.approx(manual)
    random = random_lesions(model, backbone, x, labels, draws=4,
                            generator=torch.Generator().manual_seed(0))
    assert sorted(random) == list(range(1, 10))
    assert [len(random[k]) for k in range(1, 10)] == [4, 4, 4, 4, 4, 4, 4, 4, 1]
    assert random[9][0][0] == tuple(range(9))
    assert [single[i] for i in range(9)] == pytest.approx(
        [acc for subset, acc in random_lesions(model, backbone, x, labels, draws=9,
                                               max_k=1)[1]])
    assert [is_downsampling(b) for b in backbone.blocks()] == [
        False, False, False, True, False, False, True, False, False]


# ---------------------------------------------------------------- responses

def test_branch_response_std_equals_direct_std_over_all_images():
    model = tiny_classifier()
    x = images(n=5, seed=7)
    inputs = {}
    handles = [b.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0]))
               for i, b in enumerate(model.backbone.blocks())]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    got = layer_response_std(model, response_layers(model.backbone, "blocks"), x, batch_size=2)
    with torch.no_grad():
        expected = [b.branch(inputs[i]).double().std().item()
                    for i, b in enumerate(model.backbone.blocks())]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_3x3_responses_are_every_3x3_layer_after_its_norm_before_the_relu():
    """He et al. fig. 7's layers: a CIFAR net's stem and both 3x3 layers of each basic block;
    the first one's output before its ReLU (it has negative values), the second's before the
    addition."""
    model = tiny_classifier()
    x = images(n=5, seed=7)
    layers = response_layers(model.backbone, "3x3")
    blocks = model.backbone.blocks()
    assert [layer.name for layer in layers[:3]] == ["stem", "res2.0.norm1", "res2.0.norm2"]
    assert len(layers) == 1 + 2 * len(blocks)
    inputs = {}
    handles = [b.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0]))
               for i, b in enumerate(blocks)]
    with torch.no_grad():
        model(x)
        for handle in handles:
            handle.remove()
        stem = model.backbone.stem
        expected = [stem.norm(stem.conv(x)).double().std().item()]
        for i, b in enumerate(blocks):
            first = b.norm1(b.conv1(inputs[i]))
            assert first.min() < 0  # before the ReLU
            expected += [first.double().std().item(), b.branch(inputs[i]).double().std().item()]
    got = layer_response_std(model, layers, x, batch_size=2)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    bottlenecks = backbones.build("resnet50")  # one 3x3 per block; a 7x7 stem is not one
    names = [layer.name for layer in response_layers(bottlenecks, "3x3")]
    assert len(names) == 16 and names[0] == "res2.0.norm2"
    deep = backbones.build_classifier("resnet50d", 10).eval()  # a deep stem's 3 are 3x3
    names = [layer.name for layer in response_layers(deep.backbone, "3x3")]
    assert names[:4] == ["stem.0", "stem.1", "stem.2", "res2.0.norm2"] and len(names) == 19
    with torch.no_grad():  # the norm after each 3x3 conv, as the forward computes it
        x = images(n=2, size=32, seed=3)
        stem = deep.backbone.stem.conv
        first = stem[1](stem[0](x))
        second = stem[4](stem[3](first.relu()))
    got = layer_response_std(deep, response_layers(deep.backbone, "3x3")[:2], x)
    np.testing.assert_allclose(got, [first.double().std().item(), second.double().std().item()],
                               rtol=1e-5)
    with pytest.raises(ValueError, match="responses.layers must be one of 3x3, blocks"):
        response_layers(model.backbone, "all")


# ---------------------------------------------------------------- path gradients

def test_route_gradients_sum_to_the_full_gradient():
    """Every one of the 2^n routes of a 3-block net, summed, is the whole backward pass."""
    model = tiny_classifier(depth=8)
    x, labels = images(n=3, seed=2), torch.tensor([0, 1, 2])
    graph = PathGradients(model, x, labels)
    with torch.no_grad():
        assert torch.equal(graph.logits, model(x))
    stem_out = model.backbone.stem(x).detach().requires_grad_(True)
    h = stem_out
    for block in model.backbone.blocks():
        h = block(h)
    loss = F.cross_entropy(model.fc(h.mean(dim=(2, 3))), labels, reduction="sum")
    (full,) = torch.autograd.grad(loss, stem_out)
    routes = [s for k in range(4) for s in sample_subsets(3, k, 10)]
    assert len(routes) == 8
    total = sum(graph.input_gradient(route) for route in routes)
    torch.testing.assert_close(total, full, rtol=1e-4, atol=1e-6)
    only_shortcuts = graph.input_gradient(())
    assert not torch.allclose(only_shortcuts, full)
    assert graph.magnitude(()) == pytest.approx(
        only_shortcuts.flatten(1).norm(dim=1).mean().item())


def test_path_gradients_refuse_plain_nets():
    plain = backbones.build_classifier("plain_cifar_resnet20", 3).eval()
    with pytest.raises(ValueError, match="plain"):
        PathGradients(plain, images(), torch.zeros(4, dtype=torch.long))


# ---------------------------------------------------------------- data

def write_cifar(root, per_batch=2, test=3, text=False):
    """CIFAR-10's batches, keys as bytes, or (`text`) as str: CIFAR's Python 2 strings read
    with torchvision's latin-1 decoding."""
    root.mkdir()
    rng = np.random.default_rng(0)
    b = (lambda s: s.decode()) if text else (lambda s: s)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b(b"label_names"): [b(b"cat"), b(b"dog"), b(b"ship")],
                     b(b"num_vis"): 3072}, f, protocol=2)
    arrays = {}
    for name, count in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [
            ("test_batch", test)]:
        data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 3, size=count)]
        arrays[name] = (data, labels)
        with open(root / name, "wb") as f:
            pickle.dump({b(b"batch_label"): b(name.encode()), b(b"data"): data,
                         b(b"labels"): labels, b(b"filenames"): [b(b"x.png")] * count}, f,
                        protocol=2)
    return arrays


def test_cifar_batches_load_in_channel_major_order(tmp_path):
    arrays = write_cifar(tmp_path / "cifar-10-batches-py")
    train = load_cifar_batches(tmp_path / "cifar-10-batches-py", "train")
    val = load_cifar_batches(tmp_path / "cifar-10-batches-py", "val")
    assert train.class_names == ["cat", "dog", "ship"]
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.uint8
    assert val.images.shape == (3, 3, 32, 32)
    data3, _ = arrays["data_batch_3"]
    image = train.images[4]  # first image of data_batch_3 (batches 1 and 2 hold 2 each)
    for c, y, x in [(0, 0, 0), (1, 0, 5), (2, 31, 31), (1, 7, 3)]:
        assert image[c, y, x].item() == data3[0, c * 1024 + y * 32 + x]
    assert train.labels.tolist() == [v for i in range(1, 6) for v in
                                     arrays[f"data_batch_{i}"][1]]
    assert val.labels.tolist() == arrays["test_batch"][1]
    small = load_cifar_batches(tmp_path / "cifar-10-batches-py", "val", image_size=16)
    assert small.images.shape == (3, 3, 16, 16)


def write_cifar100(root, train=7, test=4):
    """CIFAR-100's python files: train, test and meta, fine and coarse labels."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    names = [f"class{i}" for i in range(100)]
    with open(root / "meta", "wb") as f:
        pickle.dump({"fine_label_names": names, "coarse_label_names": names[:20]}, f,
                    protocol=2)
    for name, count in (("train", train), ("test", test)):
        with open(root / name, "wb") as f:
            pickle.dump({"filenames": ["x.png"] * count, "batch_label": name,
                         "fine_labels": [int(v) for v in rng.integers(0, 100, count)],
                         "coarse_labels": [int(v) for v in rng.integers(0, 20, count)],
                         "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8)}, f,
                        protocol=2)


def test_cifar100_and_torchvisions_root_read_as_torchvision_reads_them(tmp_path, monkeypatch):
    """The folder above cifar-10-batches-py (torchvision's root) was "dataset folder not
    found: root/train", and CIFAR-100's files "that is a file"."""
    torchvision = pytest.importorskip("torchvision")
    (tmp_path / "c10").mkdir()
    write_cifar(tmp_path / "c10" / "cifar-10-batches-py", text=True)
    write_cifar100(tmp_path / "c100" / "cifar-100-python")
    # (the fake batches are not the published files its checksums name)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    for root, dataset in (("c10", torchvision.datasets.CIFAR10),
                          ("c100", torchvision.datasets.CIFAR100)):
        train, val = load_splits(tmp_path / root, train_split="train", val_split="val",
                                 image_size=32)
        for split, train_flag in ((train, True), (val, False)):
            reference = dataset(str(tmp_path / root), train=train_flag)
            assert split.class_names == reference.classes
            assert split.labels.tolist() == list(reference.targets)
            assert torch.equal(split.images, torch.from_numpy(reference.data).permute(0, 3, 1, 2))
    assert len(train.class_names) == 100 and len(train) == 7 and len(val) == 4


def test_an_archive_or_cifar_batches_given_to_an_image_folder_tool_say_what_to_do(tmp_path):
    for name, extract, folder in (
            ("cifar-10-python.tar.gz", "tar xzf", " \\(cifar-10-batches-py\\)$"),
            ("cifar-100-python.tar.gz", "tar xzf", " \\(cifar-100-python\\)$"),
            ("data.tar", "tar xf", "$"), ("imagenette2.zip", "unzip", "$")):
        archive = tmp_path / name
        archive.write_bytes(b"\x1f\x8b")
        with pytest.raises(FileNotFoundError, match=rf"{name} is an archive: extract it "
                                                    rf"\(`{extract} .*{name}`\) and set "
                                                    rf"data.root to the folder it makes{folder}"):
            load_splits(archive, train_split="train", val_split="val", image_size=8)
    with pytest.raises(FileNotFoundError, match=r"data.root folder not found: .*missing"):
        load_splits(tmp_path / "missing", train_split="train", val_split="val", image_size=8)
    write_cifar100(tmp_path / "cifar-100-python")
    # tools/pretrain.py reads ImageFolder trees alone
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python holds CIFAR's python "
                                                r"batches, which tools/analyze.py reads; this "
                                                r"tool reads ImageFolder trees"):
        scan_image_folder(tmp_path / "cifar-100-python" / "train")
    # torchvision's root of both: which is meant? (CIFAR-10 was read without a word)
    both = tmp_path / "both"
    write_cifar100(both / "cifar-100-python")
    write_cifar(both / "cifar-10-batches-py")
    with pytest.raises(ValueError, match=r"both holds both cifar-10-batches-py and "
                                         r"cifar-100-python: set data.root to the one to read"):
        load_splits(both, train_split="train", val_split="val", image_size=8)
    # an ImageFolder tree beside the batches (CIFAR converted to PNGs) is read, as it was
    write_image_folder(both)
    train, _ = load_splits(both, train_split="train", val_split="val", image_size=8)
    assert train.class_names == ["blue", "green", "red"]
    # a split misnamed there is not blamed on the batches
    with pytest.raises(FileNotFoundError) as missing:
        scan_image_folder(both / "test")
    assert "CIFAR" not in str(missing.value)


def test_cifar_batches_errors_name_the_file(tmp_path):
    root = tmp_path / "cifar"
    write_cifar(root)
    (root / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        load_cifar_batches(root, "train")
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar_batches(root, "val")
    (root / "batches.meta").unlink()  # (still CIFAR's folder, not an ImageFolder tree)
    with pytest.raises(FileNotFoundError, match=r"CIFAR batch file not found: .*batches.meta"):
        load_splits(root, train_split="train", val_split="val", image_size=8)


def write_image_folder(root, colors=None, per_class=3, size=12):
    """Solid-colour PNGs (RGB colours, written as BGR for OpenCV)."""
    colors = colors or {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}
    for split, count in (("train", per_class), ("val", 2)):
        for name, rgb in colors.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = np.zeros((size, size + 4, 3), np.uint8)
                image[:] = rgb[::-1]
                cv2.imwrite(str(root / split / name / f"{i}.png"), image)


def test_image_folder_splits_are_rgb_resized_and_subset(tmp_path):
    write_image_folder(tmp_path)
    train, val = load_splits(tmp_path, train_split="train", val_split="val", image_size=8,
                             max_val=4)
    assert train.class_names == ["blue", "green", "red"]
    assert train.images.shape == (9, 3, 8, 8) and len(val) == 4
    red = train.images[train.labels == 2]
    assert (red[:, 0] == 255).all() and (red[:, 1:] == 0).all()
    with pytest.raises(FileNotFoundError, match="make_synthetic"):
        load_splits(tmp_path / "missing", train_split="train", val_split="val", image_size=8)


def test_random_crop_flip_takes_windows_of_the_padded_image():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).view(2, 3, 6, 6)
    out = random_crop_flip(x, 2, torch.Generator().manual_seed(0))
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, y:y + 6, x0:x0 + 6] for y in range(5) for x0 in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)


def test_split_dataset_is_seeded_per_key_and_normalized():
    split = ClassificationSplit(torch.full((6, 3, 4, 4), 100, dtype=torch.uint8),
                                torch.arange(6), ["a"] * 6, "mem")
    plain = SplitDataset(split, pixel_mean=[100, 50, 0], pixel_std=[1, 2, 4], augment=False)
    first = plain[(2, 7)]
    assert first["label"] == 2 and len(plain) == 6
    assert first["image"][0].unique().tolist() == [0.0]
    assert first["image"][1].unique().tolist() == [25.0]
    assert first["image"][2].unique().tolist() == [25.0]
    images = torch.arange(6 * 3 * 8 * 8, dtype=torch.uint8).view(6, 3, 8, 8)
    augmented = SplitDataset(ClassificationSplit(images, torch.arange(6), ["a"] * 6, "mem"),
                             pixel_mean=[0, 0, 0], pixel_std=[1, 1, 1], augment=True)
    assert torch.equal(augmented[(1, 5)]["image"], augmented[(1, 5)]["image"])
    draws = {tuple(augmented[(1, seed)]["image"].flatten().tolist()) for seed in range(8)}
    assert len(draws) > 1  # the seed draws the crop and flip
    assert torch.equal(augmented[1]["image"], images[1].float())  # no seed: no augmentation


def test_train_classifier_records_errors_and_learns_colours(tmp_path):
    write_image_folder(tmp_path, per_class=8)
    train, val = load_splits(tmp_path, train_split="train", val_split="val", image_size=8)
    torch.manual_seed(0)
    model = backbones.build_classifier("cifar_resnet20", 3, depth=8)
    mean, std = [127.5] * 3, [127.5] * 3
    before = accuracy(model, (train.images.float() - 127.5) / 127.5, train.labels)
    history, late_stop = train_classifier(model, train, val, recipe=Recipe(
        batch_size=6, iterations=30, base_lr=0.05, eval_period=10, log_period=10,
        augment=False), pixel_mean=mean, pixel_std=std, device=torch.device("cpu"),
        output_dir=tmp_path / "run")
    assert history.iterations == [10, 20, 30] and late_stop == ""
    assert len(history.train_error) == len(history.val_error) == 3
    assert history.val_error[-1] == 0.0
    assert before < 100.0
