"""Residual-learning studies (`tools/analyze.py`): degradation, layer responses, lesions,
effective paths, and the stochastic-depth / k-of-n path sampling training option."""
from .lesion import deleted_blocks, is_downsampling, random_lesions, single_block_lesions
from .path_sampling import (PATH_SAMPLING_DEFAULTS, KOfNPathSampler, apply_path_sampling,
                            branch_output_module, drop_path_rates, sample_subsets)
from .paths import (PathGradients, effective_paths, path_gradient_magnitudes,
                    path_length_distribution)
from .responses import layer_response_std, response_layers

__all__ = ["PATH_SAMPLING_DEFAULTS", "KOfNPathSampler", "PathGradients", "apply_path_sampling",
           "branch_output_module", "deleted_blocks", "drop_path_rates", "effective_paths",
           "is_downsampling", "layer_response_std", "path_gradient_magnitudes",
           "path_length_distribution", "random_lesions", "response_layers", "sample_subsets",
           "single_block_lesions"]
