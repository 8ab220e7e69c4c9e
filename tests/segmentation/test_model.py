"""Meta-architecture: training lowers the loss, padding and cropping, target checks."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from resnet_detect.engine.data.synthetic import generate
from resnet_detect.engine import Trainer
from resnet_detect.segmentation import SemSegEvaluator, build_model, evaluate_model
from resnet_detect.segmentation.data import build_test_loader, build_train_loader


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, seed=0, num_train=8, num_val=2, size=(64, 64), cls_train_per_class=0,
             cls_val_per_class=0)
    return root


def _synthetic_config(small_config, root):
    cfg = small_config("deeplabv3", num_classes=None)
    cfg["data"].update(class_names=str(root / "semantic" / "classes.json"), num_workers=0)
    cfg["data"]["train"].update(img_dir=str(root / "images" / "train"),
                                mask_dir=str(root / "semantic" / "train"),
                                crop_size=[64, 64], scale_range=[1.0, 1.0], hflip_prob=0.5)
    cfg["train"].update(batch_size=4, seed=0)
    return cfg


def test_short_training_lowers_the_loss(small_config, synthetic_root):
    torch.manual_seed(0)
    cfg = _synthetic_config(small_config, synthetic_root)
    loader = build_train_loader(cfg)
    cfg["model"]["num_classes"] = loader.dataset.num_classes
    assert loader.dataset.num_classes == 7  # background + 6 shapes
    model = build_model(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = []

    def step_fn(m, batch):
        losses = m([s["image"] for s in batch], batch)
        history.append({k: v.item() for k, v in losses.items()})
        return losses

    Trainer(model=model, optimizer=optimizer, scheduler=None, step_fn=step_fn,
            max_iter=20).train(iter(loader))
    assert set(history[0]) == {"loss_sem_seg", "loss_aux"}
    first = history[0]["loss_sem_seg"]
    last = sum(h["loss_sem_seg"] for h in history[-5:]) / 5
    assert first > 1.5  # about log(7) at the start
    assert last < 0.7 * first, (first, last)


def test_padding_to_size_divisibility_is_cropped_away(small_config):
    torch.manual_seed(0)
    model = build_model(small_config("deeplabv3", size_divisibility=None)).eval()
    assert model.size_divisibility == 16
    image = torch.randint(0, 256, (3, 50, 37), dtype=torch.uint8)
    with torch.no_grad():
        batch, sizes = model.preprocess([image])
        out = model([image])[0]
        raw = model.logits(batch)["sem_seg"]
    assert batch.shape == (1, 3, 64, 48) and sizes == [(50, 37)]
    assert (batch[0, :, 50:] == 0).all() and (batch[0, :, :, 37:] == 0).all()
    torch.testing.assert_close(out["sem_seg"], raw[0, :, :50, :37])


def test_output_sizes_resize_logits(small_config):
    model = build_model(small_config("fcn", aux=False)).eval()
    image = torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8)
    with torch.no_grad():
        out = model([image], output_sizes=[(80, 60)])[0]
    assert out["sem_seg"].shape == (5, 80, 60) and out["mask"].shape == (80, 60)


def test_padded_pixels_do_not_count(small_config):
    """Image 0 padded to the batch size: its loss is CE over its own (cropped) logits."""
    torch.manual_seed(0)
    model = build_model(small_config("fcn", aux=False))
    model.train()
    for m in model.modules():  # dropout off, BN on fixed statistics: compare exact losses
        if isinstance(m, (torch.nn.Dropout, torch.nn.BatchNorm2d)):
            m.eval()
    images = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8),
              torch.randint(0, 256, (3, 48, 40), dtype=torch.uint8)]
    gt = torch.randint(0, 5, (32, 32))
    gt[:4] = 255
    targets = [{"gt_sem_seg": gt}, {"gt_sem_seg": torch.full((48, 40), 255)}]
    loss = model(images, targets)["loss_sem_seg"]
    with torch.no_grad():
        logits = model.logits(model.preprocess(images)[0])["sem_seg"]
    assert logits.shape == (2, 5, 48, 40)
    expected = F.cross_entropy(logits[:1, :, 4:32, :32], gt[None, 4:])
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_a_head_on_res4_leaves_res5_out(small_config, tmp_path):
    """Pretrained res2-res4 weights load, res5 is not built (DistributedDataParallel refuses
    parameters without gradients: every one left gets one), padding follows res4's stride."""
    torch.manual_seed(0)
    pretrained = torchvision.models.resnet18().state_dict()
    torch.save(pretrained, tmp_path / "resnet18.pth")
    cfg = small_config("deeplabv3plus", output_stride=32, aux=False, size_divisibility=None)
    cfg["model"]["backbone"].update(weights=str(tmp_path / "resnet18.pth"), multi_grid=None)
    cfg["model"]["head"]["in_feature"] = "res4"
    model = build_model(cfg).train()
    assert model.backbone.stages == ["res2", "res3", "res4"]
    assert not any("res5" in k for k in model.state_dict())
    torch.testing.assert_close(model.backbone.res4[1].conv2.weight,
                               pretrained["layer3.1.conv2.weight"])
    assert model.size_divisibility == 16
    images = [torch.randint(0, 256, (3, 40, 36), dtype=torch.uint8) for _ in range(2)]
    targets = [{"gt_sem_seg": torch.randint(0, 5, (40, 36))} for _ in range(2)]
    sum(model(images, targets).values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    cfg["model"]["head"]["in_feature"] = "res5"
    assert build_model(cfg).backbone.stages == ["res2", "res3", "res4", "res5"]


def test_bad_targets(small_config):
    model = build_model(small_config("fcn")).train()
    images = [torch.zeros(3, 32, 32), torch.zeros(3, 32, 32)]
    ok = {"gt_sem_seg": torch.zeros(32, 32, dtype=torch.int64)}
    with pytest.raises(ValueError, match="needs targets"):
        model(images)
    with pytest.raises(ValueError,
                       match=r"target 1: gt_sem_seg is \(32, 31\), its image \(32, 32\)"):
        model(images, [ok, {"gt_sem_seg": torch.zeros(32, 31, dtype=torch.int64)}])
    bad = torch.zeros(32, 32, dtype=torch.int64)
    bad[0, 0], bad[0, 1] = 5, 255
    with pytest.raises(ValueError, match=r"target 0: gt_sem_seg has class ids \[5\] outside 0..4"):
        model(images, [{"gt_sem_seg": bad}, ok])
    bad[5, 5] = -3  # and in the second image of a batch, among valid and ignored pixels
    with pytest.raises(ValueError, match=r"target 1: gt_sem_seg has class ids \[-3, 5\] outside"):
        model(images, [ok, {"gt_sem_seg": bad}])
    with pytest.raises(ValueError, match=r"image 0 must be a \(3, H, W\) RGB tensor"):
        model([torch.zeros(1, 32, 32)], [ok])


class AllBackground(torch.nn.Module):
    """Predicts class 0 everywhere (what evaluate_model needs of a model)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("pixel_mean", torch.zeros(3, 1, 1))

    def forward(self, images):
        return [{"mask": torch.zeros(im.shape[1:], dtype=torch.int64)} for im in images]


def test_evaluate_model_over_the_validation_split(small_config, synthetic_root, tmp_path):
    cfg = _synthetic_config(small_config, synthetic_root)
    cfg["data"]["val"].update(img_dir=str(synthetic_root / "images" / "val"),
                              mask_dir=str(synthetic_root / "semantic" / "val"))
    loader = build_test_loader(cfg)
    names = loader.dataset.class_names
    result = evaluate_model(AllBackground(), loader, SemSegEvaluator(len(names), names),
                            output_dir=tmp_path)
    gt = np.concatenate([np.asarray(Image.open(p)).ravel()
                         for p in sorted((synthetic_root / "semantic" / "val").glob("*.png"))])
    gt = gt[gt != 255]
    present = np.unique(gt)
    background_iou = 100.0 * (gt == 0).mean()  # TP = background pixels, union = all pixels
    m = result["sem_seg"]
    assert m["pixel_acc"] == pytest.approx(background_iou)
    assert m["mIoU"] == pytest.approx(background_iou / len(present))  # other classes: IoU 0
    assert m["per_class_iou"]["background"] == pytest.approx(background_iou)
    assert json.loads((tmp_path / "metrics.json").read_text()) == result
