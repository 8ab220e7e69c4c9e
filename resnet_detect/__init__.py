"""Object detection and segmentation on ResNet backbones: `backbones` (the ResNets, their
weights and pretraining), `detection` (Faster and Mask R-CNN), `segmentation` (FCN,
DeepLabV3/V3+) and `engine`, what the three share (configs, data, training, evaluation)."""
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# the YAML configs, whose base_*.yaml files hold every key's default: configs/ beside this
# package in the repository (an editable install reads them there), inside it in a wheel
CONFIGS = _PACKAGE / "configs" if (_PACKAGE / "configs").is_dir() else _PACKAGE.parent / "configs"
