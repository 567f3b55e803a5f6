"""The synthetic benchmark with hard negatives (`--dataset synthetic-scenes`), generated from a seed.

Flickr30K/COCO hold many near-duplicate pairs (a dog running on grass, a man riding a bike), so a
batch often holds a negative that is almost a positive. Here every instance belongs to one of a
few hundred scenes: its latent factors are the scene's centre on SHARED_FACTORS of the LATENT
factors (plus a small jitter) and its own on the rest. Images and captions come from those
latents exactly as in the plain synthetic benchmark (synthetic.pairs: the same random maps and
modality noise), so the only change is the scene structure. Relevance stays instance-level, as in
Flickr30K: another pair of the same scene is a wrong match (a hard negative) in evaluation, and a
training caption shuffled onto a scene-mate's image is noisy.

Scenes are drawn uniformly per instance, and the val and test splits share the training split's
scenes (new instances of the same scenes). With N_train / PAIRS_PER_SCENE scenes (300 at the
default size), a given pair of a batch of B = 128 has another pair of its scene in the batch
with probability ≈ 1 - (1 - 1/S)^(B - 1) ≈ 0.35 (measured by `scene_mate_rate`: 0.35, and every
batch holds such pairs). After 12 epochs at 0 % noise, half of SREM's test R@1 errors (image →
text) land on a caption of the same scene, against 0.3 % by chance: scene-mates are the hard
negatives (`python -m srem_kernels.train.scenes --train` prints both measurements).
"""

from __future__ import annotations

import torch

from srem_kernels.train import synthetic
from srem_kernels.train.data import Dataset
from srem_kernels.train.noise import shuffle_captions
from srem_kernels.train.trainer import epoch_batches, epoch_seed

PAIRS_PER_SCENE = 20  # training pairs per scene on average: 300 scenes at the default size
SHARED_FACTORS = 28  # of synthetic.LATENT (32): the scene's; the other 4 are the instance's own
JITTER = 0.1  # std of each instance's deviation from its scene's shared factors


def scene_count(size: str) -> int:
    return max(2, synthetic.SIZES[size][0] // PAIRS_PER_SCENE)


def latents(centres: torch.Tensor, scene: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Instance latents (n × LATENT): the scene centre's shared factors plus jitter, own factors
    drawn fresh; every factor has variance about 1 (1 + JITTER² for the shared ones), as the plain
    benchmark's N(0, I)."""
    n = len(scene)
    own = torch.randn(n, synthetic.LATENT - SHARED_FACTORS, generator=g)
    shared = centres[scene] + JITTER * torch.randn(n, SHARED_FACTORS, generator=g)
    return torch.cat([shared, own], dim=1)


def load(*, noise: float, seed: int, size: str = "default") -> Dataset:
    return load_with_scenes(noise=noise, seed=seed, size=size)[0]


def load_with_scenes(*, noise: float, seed: int, size: str = "default") -> tuple[Dataset, dict[str, torch.Tensor]]:
    """The dataset and each split's scene id per pair (train, val, test): the measurements'
    ground truth, kept off Dataset.info, which describes the data (results.json holds it)."""
    if size not in synthetic.SIZES:
        raise ValueError(f"synthetic size must be one of {', '.join(synthetic.SIZES)}, got {size!r}")
    g = torch.Generator().manual_seed(10_007 * seed + 3)
    img_maps, txt_map = synthetic.maps(g)
    n_scenes = scene_count(size)
    centres = torch.randn(n_scenes, SHARED_FACTORS, generator=g)
    scenes, splits = {}, []
    for name, n in zip(("train", "val", "test"), synthetic.SIZES[size]):
        scenes[name] = torch.randint(n_scenes, (n,), generator=g)
        splits.append(synthetic.pairs(latents(centres, scenes[name], g), img_maps, txt_map, g))
    train, val, test = splits
    train.cap2img = shuffle_captions(train.cap2img, noise, g)
    train.noisy = train.cap2img != train.cap_key
    info = {"layout": synthetic.GENERATED, "size": size, "latent": synthetic.LATENT, "regions": synthetic.REGIONS,
            "scenes": n_scenes, "shared_factors": SHARED_FACTORS, "jitter": JITTER}
    return Dataset("synthetic-scenes", train, val, test, info=info), scenes


def scene_mate_rate(scene: torch.Tensor, batch_size: int, seed: int, epochs: int = 5) -> dict[str, float]:
    """How often in-batch near-duplicates occur in the first `epochs` epochs of a run of `seed`
    with batches of `batch_size` pairs (the trainer's own batches: trainer.epoch_batches).
    `pair`: the fraction of a batch's pairs that have another pair of their scene in the batch
    (a false or near-false negative in their row); `batch`: the fraction of batches holding at
    least one such pair; `mates`: the mean number of scene-mates a pair has in its batch."""
    hit = pairs = batches = with_mate = mates = 0
    for epoch in range(epochs):
        for idx in epoch_batches(len(scene), batch_size, epoch_seed(seed, epoch, 0)):
            s = scene[idx]
            count = torch.bincount(s)[s] - 1  # other pairs of the same scene in this batch
            hit += int((count > 0).sum())
            mates += int(count.sum())
            pairs += len(s)
            batches += 1
            with_mate += bool((count > 0).any())
    return {"pair": hit / pairs, "batch": with_mate / batches, "mates": mates / pairs}


def scene_mate_errors(img: torch.Tensor, cap: torch.Tensor, scene: torch.Tensor) -> dict[str, float]:
    """Of the test images whose top-1 caption is wrong (instance-level), the share whose top-1
    caption belongs to the same scene; img and cap are the split's embeddings, instance i ↔ i."""
    top = (img @ cap.T).argmax(dim=1)
    wrong = top != torch.arange(len(top))
    mate = scene[top][wrong] == scene[wrong]
    return {"r1_error": wrong.double().mean().item(), "scene_mate_share": mate.double().mean().item()}


def main(argv: list[str] | None = None) -> None:
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description="The scene structure's numbers: in-batch scene-mate rates, and with "
                                 "--train the share of a trained SREM's R@1 errors that are scene-mates.")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--size", default="default", choices=tuple(synthetic.SIZES))
    ap.add_argument("--train", action="store_true", help="also train srem at 0 %% noise (seed 0, one thread)")
    args = ap.parse_args(argv)
    for seed in (int(s) for s in args.seeds.split(",")):
        d, scene = load_with_scenes(noise=0.0, seed=seed, size=args.size)
        r = scene_mate_rate(scene["train"], args.batch_size, seed)
        print(f"seed {seed}: {d.info['scenes']} scenes; batch of {args.batch_size}: {r['pair']:.3f} of pairs have a "
              f"scene-mate in the batch ({r['mates']:.3f} mates per pair), {r['batch']:.3f} of batches hold one")
    if args.train:
        from srem_kernels.train import evaluation, model as model_mod
        from srem_kernels.train.trainer import CHECKPOINT, TrainConfig, train

        torch.set_num_threads(1)
        d, scene = load_with_scenes(noise=0.0, seed=0, size=args.size)
        with tempfile.TemporaryDirectory() as out:
            cfg = TrainConfig(dataset="synthetic-scenes", synthetic_size=args.size, method="srem", seed=0, output=out,
                              progress=False, quiet=True)
            train(cfg)
            ck = torch.load(f"{out}/{CHECKPOINT}", weights_only=False)
        net = model_mod.build(d, cfg.resolved().embed_dim)
        net.load_state_dict(ck["best"]["state"])
        e = scene_mate_errors(*evaluation.encode(net, d.test), scene["test"])
        chance = (scene["test"].bincount().double().pow(2).sum() - len(d.test)) / (len(d.test) * (len(d.test) - 1))
        print(f"srem, 0 % noise, seed 0: test i2t R@1 error {e['r1_error']:.3f}, of which on a scene-mate's caption "
              f"{e['scene_mate_share']:.3f} (a random wrong caption: {chance.item():.4f})")


if __name__ == "__main__":
    main()
