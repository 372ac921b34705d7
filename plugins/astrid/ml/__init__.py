"""AstrID machine learning: U-Net, weights + model card, tiled inference engine, detection
extraction, matched-filter baseline, training and evaluation.

Importing this package is cheap; submodules import torch/scipy on use.
"""
