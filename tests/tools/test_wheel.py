"""A wheel of the project (`pip install .`, a Docker image) works without the repository: the
library reads its defaults from configs/*/base_*.yaml, so the wheel must carry them (as
resnet_detect/configs), and the tools (as resnet_detect/tools: `python -m resnet_detect TOOL`).
It installs one top-level package, resnet_detect, with every module of it. Checkpoints made
here give the same predictions when read from the wheel alone."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from resnet_detect import backbones, detection, segmentation
from resnet_detect.detection.training import make_provenance
from resnet_detect.engine.data import CategoryMapping

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "LICENSE", "resnet_detect", "configs",
           "tools")
TINY_DET = ["model.backbone.weights=null", "model.fpn.out_channels=32",
            "model.roi_heads.fc_dims=[64,64]", "model.num_classes=3",
            "model.roi_heads.score_thresh=0.0"]
TINY_SEG = ["model.backbone.weights=null", "model.num_classes=3"]
# run with only the unpacked wheel importable, from a folder that is not the repository
CHECK = """
import sys
from pathlib import Path
import numpy as np
from resnet_detect import detection, segmentation
from resnet_detect.backbones.pretraining import BASE_CONFIG as pretrain_defaults
from resnet_detect.backbones.studies.config import BASE_CONFIG as study_defaults
from resnet_detect.engine.config import load_defaults

site, work = Path(sys.argv[1]), Path(sys.argv[2])
assert Path(detection.__file__).is_relative_to(site), detection.__file__
for defaults in (pretrain_defaults, study_defaults):
    load_defaults(defaults)
image = np.load(work / "image.npy")
np.save(work / "boxes.npy", detection.Predictor(None, weights=work / "det.pth")(image)["boxes"])
np.save(work / "mask.npy", segmentation.Predictor(None, weights=work / "seg.pth")(image)["mask"])
import resnet_detect, subprocess
assert resnet_detect.__version__ == "0.1.0", resnet_detect.__version__
# the tools, without the repository's tools/ folder: python -m resnet_detect TOOL
info = subprocess.run([sys.executable, "-m", "resnet_detect", "model_info", "resnet18"],
                      capture_output=True, text=True, check=True).stdout
assert "11,689,512" in info, info  # torchvision's resnet18 parameters
# the README's repository paths: the installed package's config is named
train = subprocess.run([sys.executable, "-m", "resnet_detect", "train",
                        "configs/synthetic/faster_rcnn_R_18_FPN.yaml"], capture_output=True,
                       text=True)
packaged = site / "resnet_detect/configs/synthetic/faster_rcnn_R_18_FPN.yaml"
assert train.returncode == 2 and train.stderr.strip().endswith(
    f"the installed package has it: {packaged} (`_base_: "
    f"resnet_detect::synthetic/faster_rcnn_R_18_FPN.yaml` wherever it is installed)"), train.stderr
# which a config of one's own inherits
(work / "mine.yaml").write_text("_base_: resnet_detect::synthetic/faster_rcnn_R_18_FPN.yaml\\n"
                                "model:\\n  num_classes: 3\\n")
printed = subprocess.run([sys.executable, "-m", "resnet_detect", "train", str(work / "mine.yaml"),
                          "model.backbone.weights=null", "--print-config"], capture_output=True,
                         text=True)
assert printed.returncode == 0 and "  num_classes: 3\\n" in printed.stdout, printed.stderr
"""


@pytest.mark.slow
def test_a_wheel_alone_reads_its_defaults_and_predicts_as_the_repository(tmp_path: Path) -> None:
    source = tmp_path / "source"  # pip builds in the source tree: a copy, not the repository
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    assert (site / "resnet_detect/configs/detection/base_faster_rcnn.yaml").is_file()
    modules = {p.relative_to(site) for p in (site / "resnet_detect").rglob("*.py")}
    modules.remove(Path("resnet_detect/configs/__init__.py"))
    tools = {p for p in modules if p.parts[1] == "tools"}
    assert modules - tools == {p.relative_to(ROOT) for p in (ROOT / "resnet_detect").rglob("*.py")}
    assert {p.name for p in tools} == {p.name for p in (ROOT / "tools").glob("*.py")}
    (top_level,) = site.glob("*.dist-info/top_level.txt")
    assert top_level.read_text().split() == ["resnet_detect"]
    (entry_points,) = site.glob("*.dist-info/entry_points.txt")
    assert "resnet-detect = resnet_detect.__main__:main" in entry_points.read_text()
    assert list(site.glob("*.dist-info/**/LICENSE"))

    torch.manual_seed(0)
    det_cfg = detection.config.load_config(ROOT / "configs/synthetic/faster_rcnn_R_18_FPN.yaml",
                                           TINY_DET)
    model = detection.build_model(det_cfg)
    torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.5)
    mapping = CategoryMapping((2, 7, 40), ("cat", "dog", "emu"))
    backbones.save_checkpoint(tmp_path / "det.pth", model.state_dict(),
                              make_provenance(det_cfg, mapping))
    seg_cfg = segmentation.load_config(ROOT / "configs/synthetic/deeplabv3_R_18_os16.yaml",
                                       TINY_SEG)
    seg_model = segmentation.build_model(seg_cfg)
    torch.nn.init.normal_(seg_model.head.predictor.weight, std=1.0)
    backbones.save_checkpoint(tmp_path / "seg.pth", seg_model.state_dict(),
                              segmentation.provenance_from_config(seg_cfg, ["a", "b", "c"]))
    image = np.random.default_rng(0).integers(0, 256, (72, 96, 3), dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", CHECK, str(site), str(tmp_path)], check=True,
                   cwd=tmp_path, env={**env, "PYTHONPATH": str(site),
                                      "OMP_NUM_THREADS": str(torch.get_num_threads())})
    boxes = detection.Predictor(None, weights=tmp_path / "det.pth")(image)["boxes"]
    mask = segmentation.Predictor(None, weights=tmp_path / "seg.pth")(image)["mask"]
    assert len(boxes) > 0 and len(np.unique(mask)) >= 2
    np.testing.assert_array_equal(np.load(tmp_path / "boxes.npy"), boxes)
    np.testing.assert_array_equal(np.load(tmp_path / "mask.npy"), mask)
