"""Training pipeline: SREM and its baselines end to end on noisy image–text pairs.

    srem-train --dataset synthetic --noise 0.4 --method srem --seed 0 --output runs/srem

Modules, one job each: `data` (the split container and the dataset dispatcher), `noise` (NCR's
noise protocol), `synthetic`, `precomp` (the NCR/RCL precomputed layout), `digits` (optional
real-pixel extra), `model` (dual encoder), `methods` (the losses), `selection` (dataset-level
energy filtration and its metrics), `evaluation` (recall@K), `trainer`, `cli`, `experiment`.
"""

from srem_kernels.train.trainer import TrainConfig, train

__all__ = ["TrainConfig", "train"]
