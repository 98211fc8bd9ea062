"""Training cost of an NCSN prior: float32 against bfloat16 autocast, at equal samples.

    python benchmarks/training.py --data data/piano_violin_real --source piano --steps 100
    python benchmarks/training.py --images mnist:MNIST_DIR --steps 20 --batch-size 64 --ch-mult 1 2 2
    python benchmarks/training.py --data D --init-from audiosep/pretrained/ncsn_piano_violin/piano.pt \\
        --train-sigma-max 0.05

Each precision trains the same model from the same seed on the same crops for `--steps`
steps (`audiosep.training.ncsn.train_ncsn`, one torch thread by default, into a temporary
checkpoint), then the EMA weights are validated in float32 on the same fixed valid crops with
the same noise. Printed per precision: samples per second (wall time of the run, validation
included once at the end), seconds per step, the final training loss and the valid loss, and
bf16's speed and valid loss against fp32's measured in the same run.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from audiosep.config import TrainConfig
from audiosep.errors import run_reporting_user_errors
from audiosep.priors.ncsn import NCSNConfig
from audiosep.training.data import Images, MelPatches
from audiosep.training.ncsn import train_ncsn


def one_run(args: argparse.Namespace, precision: str, folder: Path) -> dict:
    """Train `args.steps` steps at `precision`; its figures."""
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, valid_every=args.steps,
                         checkpoint_every=args.steps, valid_batches=args.valid_batches, seed=args.seed,
                         progress=False, precision=precision)
    start = time.perf_counter()
    valid_items = args.valid_batches * args.batch_size
    data = Images(args.images, valid_items) if args.images else MelPatches(args.data, args.source,
                                                                          valid_items=valid_items)
    model = NCSNConfig(nf=args.nf, ch_mult=tuple(args.ch_mult)) if args.ch_mult else NCSNConfig(nf=args.nf)
    result = train_ncsn(data, folder / f"{precision}.pt", model_config=model,
                        config=config, init_from=args.init_from, train_sigma_max=args.train_sigma_max)
    wall = time.perf_counter() - start
    return {"precision": precision, "samples/s": args.steps * args.batch_size / wall,
            "s/step": wall / args.steps, "train loss": result["loss"], "valid loss": result["valid_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "piano_violin_real",
                        help="stems dataset (default: the recipe's augmented set, data/piano_violin_real)")
    parser.add_argument("--source", default="piano")
    parser.add_argument("--images", metavar="SPEC", help="an image dataset instead (digits, mnist:DIR, ...)")
    parser.add_argument("--ch-mult", type=int, nargs="+", help="NCSN channel multipliers (default: NCSNConfig's)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--valid-batches", type=int, default=4)
    parser.add_argument("--nf", type=int, default=32, help="NCSN width of a fresh model (default 32, the bundled)")
    parser.add_argument("--init-from", type=Path, help="fine-tune this NCSN checkpoint instead of a fresh model")
    parser.add_argument("--train-sigma-max", type=float, help="train only the levels σ ≤ this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one_run(args, precision, Path(tmp)) for precision in ("fp32", "bf16")]
    table = pd.DataFrame(rows).set_index("precision")
    what = args.images if args.images else f"{args.source} of {args.data}"
    print(f"NCSN training, {what}, {args.steps} steps x batch {args.batch_size}, "
          f"{args.threads} torch thread(s), CPU" + (f", from {args.init_from}" if args.init_from else "") +
          (f", levels σ <= {args.train_sigma_max:g}" if args.train_sigma_max else ""))
    print(table.round(4).to_string())
    print(f"bf16 / fp32: {table.loc['bf16', 'samples/s'] / table.loc['fp32', 'samples/s']:.2f}x the samples/s, "
          f"valid loss {table.loc['bf16', 'valid loss'] / table.loc['fp32', 'valid loss']:.3f}x")


if __name__ == "__main__":
    run_reporting_user_errors(main, "training.py")
