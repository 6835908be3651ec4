"""Run the TopoDisc 2-D diagnostic: train every quantization method on a disk and a triangle, and plot them.

Example:
    python scripts/topodisc.py --output_dir docs/topodisc
    python scripts/topodisc.py --small --output_dir /tmp/topodisc   # a few seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from provq_hf.configuration_provq import METHODS, OMEGA_MODES
from provq_hf.topodisc import TopoDiscSettings, run_topodisc

DESCRIPTION = """\
TopoDisc: 2-D points drawn uniformly from a disk and a triangle are encoded by a small MLP into a 2-D
latent, quantized by the tokenizer's ProgressiveVectorQuantizer with codes that are not l2-normalized,
and decoded back. Every method in --methods trains for the same number of optimizer steps on every seed.

Why the defaults: the codebook (256 codes) is large for 2-D data, so a healthy quantizer spreads its
codes over both shapes while a collapsed one leaves most of them dead, and the triangle's straight
edges show any grid of codes as a staircase. `vanilla` starts from LlamaGen's random codebook,
uniform in (-1/K, 1/K), which packs every code near the origin, and from that start plain VQ tends
to leave many codes dead. The manifold warmup and the transition each take a third of the step
budget, so every method trains its last third fully discrete. Training runs on one CPU thread
(--num_threads), because the matrices are too small to gain from more.

Outputs in --output_dir: <method>.png (data plane and latent plane of the first seed), overview.png
(all methods), codebook_utilization.png (over training steps), results.json (one entry per method
plus `settings`) and results.md (mean and sample standard deviation over seeds).
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="Folder for the figures, results.json and results.md.")
    parser.add_argument(
        "--methods", nargs="+", default=list(METHODS), choices=METHODS, help="Methods to train (default: all five)."
    )
    defaults, small = TopoDiscSettings(), TopoDiscSettings.small()
    parser.add_argument(
        "--small",
        action="store_true",
        help=f"Start from small settings ({small.codebook_size} codes, {small.steps} steps, {small.num_points} "
        "points) that run in seconds, for tests. Flags given explicitly still override them.",
    )
    parser.add_argument(
        "--seed", type=int, nargs="+", dest="seeds", help=f"Seeds to average over. Default: {list(defaults.seeds)}."
    )

    # Each flag overrides one field of the starting settings (the defaults, or the --small ones).
    settings_flags = {
        "num_points": (int, "Training points sampled from the disk and the triangle."),
        "num_eval_points": (int, "Held-out points used for the metrics and the figures."),
        "data_scale": (float, "Factor applied to the coordinates of both shapes (the disk has radius 1 at scale 1)."),
        "codebook_size": (int, "Number of codes K."),
        "hidden_dim": (int, "Width of the MLP encoder and decoder."),
        "num_hidden_layers": (int, "Hidden layers of the MLP encoder and of the decoder."),
        "steps": (int, "Optimizer steps per run, the same for every method."),
        "batch_size": (int, "Points per optimizer step."),
        "learning_rate": (float, "Adam learning rate."),
        "manifold_warmup_steps": (int, "T_w: steps during which the decoder sees the continuous latent."),
        "transition_steps": (int, "T_s: steps of the soft-to-hard blend after the warmup."),
        "log_every": (int, "Steps between two measurements of codebook utilization."),
        "num_threads": (int, "CPU threads for torch during training (restored afterwards)."),
    }
    for name, (kind, help_text) in settings_flags.items():
        default, small_default = getattr(defaults, name), getattr(small, name)
        default_text = f"Default: {default}" + (f" ({small_default} with --small)." if small_default != default else ".")
        parser.add_argument(f"--{name}", type=kind, help=f"{help_text} {default_text}")
    parser.add_argument(
        "--omega",
        choices=OMEGA_MODES,
        help="Weight w(t) of the VQ terms during the transition: alpha (w = a(t)) or constant (w = 1). "
        f"Default: {defaults.omega}.",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    settings = TopoDiscSettings.small() if args.small else TopoDiscSettings()
    overrides = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(TopoDiscSettings)
        if getattr(args, field.name, None) is not None
    }
    if "seeds" in overrides:
        overrides["seeds"] = tuple(overrides["seeds"])
    settings = dataclasses.replace(settings, **overrides)
    return run_topodisc(settings, args.output_dir, methods=args.methods)


if __name__ == "__main__":
    main()
