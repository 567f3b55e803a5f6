"""srem-train: train SREM or a baseline on a noisy image–text dataset.

    srem-train --dataset synthetic --noise 0.4 --method srem --seed 0 --output runs/srem
    srem-train --model sgr ...                                           # SGRAF's SGR network (or saf)
    srem-train --eval-ensemble RUN_SGR RUN_SAF                           # SGRAF: the two runs' similarities averaged
    srem-train --check-data --dataset f30k --data-path DIR --noise 0.2   # read everything, train nothing
    torchrun --nproc_per_node 2 -m srem_kernels.train --batch-size 64 ...   # one global batch of 128
"""

from __future__ import annotations

import argparse
import sys

from srem_kernels.train import check
from srem_kernels.train.data import DATASETS, DataError
from srem_kernels.train.methods import METHODS
from srem_kernels.train.synthetic import SIZE_NAMES
from srem_kernels.train.trainer import MODELS, TrainConfig, train


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        raise SystemExit(f"srem-train: error: {message}")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="srem-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="synthetic", help=f"one of {', '.join(DATASETS)} (default synthetic)")
    ap.add_argument("--noise", type=float, default=0.0, help="fraction of training captions shuffled, in [0, 1)")
    ap.add_argument("--method", default="srem", help=f"one of {', '.join(METHODS)} (default srem)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", help="folder for log.jsonl, checkpoint.pt, results.json (default runs/srem)")
    ap.add_argument("--epochs", type=int, help="default per dataset (synthetic 12, f30k/coco/cc152k 40)")
    ap.add_argument("--warmup-epochs", type=int, help="SREM's complementary-only warm-up (synthetic 2, others 5)")
    ap.add_argument("--batch-size", type=int, default=128, help="per process: under torchrun the global batch is WORLD_SIZE x this")
    ap.add_argument("--lr", type=float, help="Adam learning rate (synthetic 1e-3, others 2e-4)")
    ap.add_argument("--lr-update", type=int, help="epochs between 10x learning-rate decays")
    ap.add_argument("--grad-clip", type=float, default=2.0)
    ap.add_argument("--margin", type=float, default=0.2)
    ap.add_argument("--tau", type=float, default=0.05)
    ap.add_argument("--embed-dim", type=int)
    ap.add_argument("--model", default="vse", help=f"one of {', '.join(MODELS)}: the VSE∞-style dual encoder (default) or "
                    "SGRAF's similarity network SGR or SAF")
    ap.add_argument("--sim-dim", type=int, help="sgr/saf: alignment vectors' dimension (synthetic 64, others 256)")
    ap.add_argument("--word-dim", type=int, help="sgr/saf: word embeddings' dimension (synthetic 64, others 300)")
    ap.add_argument("--sgr-steps", type=int, help="sgr: graph-reasoning steps (default 3)")
    ap.add_argument("--sim-chunk", type=int, default=4096,
                    help="sgr/saf: image-caption pairs per block of the network's similarity (bounds its working memory)")
    ap.add_argument("--eval-ensemble", nargs=2, metavar=("RUN_A", "RUN_B"),
                    help="evaluate two finished runs (an SGR and an SAF run: SGRAF) on their test split with their "
                    "similarities averaged; train nothing. With --output, writes OUTPUT/results.json")
    ap.add_argument("--loss-backend", default="auto", help="force a backend of srem_kernels.backends()")
    ap.add_argument("--data-path", help="folder holding {name}_precomp/ and vocab/ (f30k, coco, cc152k)")
    ap.add_argument("--noise-file", help="noise index .npy, image-level (RCL) or caption-level (NCR); default: "
                    "DIR/{name}_precomp/noise_inx_{noise}.npy or DIR/noise_index/{name}_precomp_{noise}.npy if present, "
                    "else drawn from the seed")
    ap.add_argument("--save-noise", metavar="PATH", help="write the training noise index (caption-level .npy, NCR's) to PATH")
    ap.add_argument("--check-data", action="store_true",
                    help="read the dataset, print its sizes, noise file and vocabulary coverage; train nothing")
    ap.add_argument("--synthetic-size", default="default", choices=SIZE_NAMES)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dist-timeout", type=float, default=600.0,
                    help="under torchrun: seconds a collective waits for the other ranks before it fails (default 600)")
    ap.add_argument("--resume", action="store_true", help="continue the run in OUTPUT from its checkpoint.pt")
    ap.add_argument("--overwrite", action="store_true", help="replace the run in OUTPUT (without it, a folder holding a run is refused)")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    ap.add_argument("--quiet", action="store_true")
    return ap


def config(argv: list[str] | None = None) -> TrainConfig:
    return _parse(argv)[0]


def _parse(argv):
    args = vars(parser().parse_args(argv))
    check_data, ensemble = args.pop("check_data"), args.pop("eval_ensemble")
    if ensemble is None and args["output"] is None:
        args["output"] = TrainConfig.output
    return TrainConfig(**args), check_data, ensemble


def main(argv: list[str] | None = None) -> int:
    cfg, check_data, ensemble = _parse(argv)
    import srem_kernels

    try:
        if ensemble:
            from srem_kernels.train import ensemble as ensemble_mod

            ensemble_mod.evaluate_runs(*ensemble, output=cfg.output, overwrite=cfg.overwrite, device=cfg.device,
                                       chunk=cfg.sim_chunk, progress=cfg.progress, quiet=cfg.quiet)
            return 0
        cfg.resolved()  # argument errors before any work
        if check_data:
            check.check(cfg)
            return 0

        status = srem_kernels.backends()
        if cfg.loss_backend != "auto":
            if cfg.loss_backend not in status:
                raise ValueError(f"--loss-backend must be 'auto' or one of {', '.join(status)}; got {cfg.loss_backend!r}")
            if not status[cfg.loss_backend].available:
                raise ValueError(f"--loss-backend {cfg.loss_backend} is not available here: {status[cfg.loss_backend].reason}")
        train(cfg)
    except (DataError, srem_kernels.BackendUnavailable) as err:
        print(f"srem-train: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        msg = str(err)
        first, _, rest = msg.partition(" ")
        if first in TrainConfig.__dataclass_fields__:  # name the option as typed
            msg = f"--{first.replace('_', '-')} {rest}"
        print(f"srem-train: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
