"""Suite-wide settings: one intra-op thread keeps timings predictable on small shared machines."""
import torch

torch.set_num_threads(1)
