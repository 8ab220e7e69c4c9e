"""Semantic segmentation on dilated ResNets: FCN, DeepLabV3, DeepLabV3+.

`build_model(cfg)`, `load_config(path, overrides)`, `Predictor(config, weights=...)`;
data in `segmentation.data`, metrics in `segmentation.evaluation`.
"""
from .build import build_model, defaults, load_config, provenance_from_config
from .convert import convert_torchvision_segmentation, load_segmentation_weights
from .evaluation import SemSegEvaluator
from .heads import (ASPP, ASPP_RATES, DeepLabV3Head, DeepLabV3PlusHead, FCNHead, SemSegHead,
                    aspp_rates)
from .inference import TTAInference, evaluate_model
from .model import SemanticSegmentor
from .predictor import Predictor

__all__ = ["ASPP", "ASPP_RATES", "defaults", "DeepLabV3Head", "DeepLabV3PlusHead", "FCNHead",
           "Predictor", "SemSegEvaluator", "SemSegHead", "SemanticSegmentor", "TTAInference",
           "aspp_rates", "build_model", "convert_torchvision_segmentation", "evaluate_model",
           "load_config", "load_segmentation_weights", "provenance_from_config"]
