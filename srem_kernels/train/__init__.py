"""Training pipeline: SREM and its baselines end to end on noisy image–text pairs.

    srem-train --dataset synthetic --noise 0.4 --method srem --seed 0 --output runs/srem

Modules, one job each: `data` (the split container and the --dataset registry), `noise` (NCR's
noise protocol and the noise-index files), `synthetic`, `precomp` (the NCR/RCL precomputed
layout), `captions` (caption files, nltk tokens, vocabulary), `check` (--check-data), `digits`
(optional real-pixel extra), `model` (dual encoder), `sgraf` (SGRAF's SGR and SAF networks),
`methods` (the losses), `selection` (dataset-level energy filtration and its metrics), `evaluation`
(recall@K), `ensemble` (--eval-ensemble), `trainer`, `cli`, `experiment`.
"""

from srem_kernels.train.trainer import TrainConfig, train

__all__ = ["TrainConfig", "train"]
