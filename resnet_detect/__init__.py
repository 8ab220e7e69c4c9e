"""Object detection and segmentation on ResNet backbones: `backbones` (the ResNets, their
weights and pretraining), `detection` (Faster and Mask R-CNN), `segmentation` (FCN,
DeepLabV3/V3+) and `engine`, what the three share (configs, data, training, evaluation)."""
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# the YAML configs, whose base_*.yaml files hold every key's default: configs/ beside this
# package in the repository (an editable install reads them there), inside it in a wheel
CONFIGS = _PACKAGE / "configs" if (_PACKAGE / "configs").is_dir() else _PACKAGE.parent / "configs"


def __getattr__(name: str) -> str:
    """`resnet_detect.__version__`, read from the installed metadata when asked (reading it
    at import costs every tool's start tens of milliseconds)."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import metadata
    try:
        return metadata.version("resnet-detect")
    except metadata.PackageNotFoundError:  # the repository's package, not installed
        return "unknown"
