"""Figures of the TopoDisc diagnostic: data and latent planes per method, and utilization over training."""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .topodisc import TopoDiscRun

@torch.no_grad()
def _draw_planes(run: TopoDiscRun, points: torch.Tensor, data_ax, latent_ax) -> None:
    model = run.model.eval()  # fully discrete, as in the metrics
    latents = model.encoder(points)
    ids = model.quantizer.nearest_code_ids(latents)
    codes = model.quantizer.codes()
    decoded_codes = model.decoder(codes)
    used = torch.zeros(len(codes), dtype=torch.bool)
    used[ids.unique()] = True
    # A fixed shuffle of the ids spreads the colors of neighbouring cells over the color map.
    colors = torch.randperm(len(codes), generator=torch.Generator().manual_seed(0))[ids].numpy()

    data_ax.scatter(*points.T, c=colors, cmap="tab20", s=3, linewidths=0)
    data_ax.scatter(*decoded_codes[used].T, c="black", s=8, label="reconstructions (decoded used codes)")
    num_dead = int((~used).sum())
    data_ax.scatter(
        *decoded_codes[~used].T, c="red", marker="x", s=10, linewidths=0.7, label=f"decoded dead codes ({num_dead})"
    )
    low, high = points.min(0).values, points.max(0).values
    margin = 0.15 * (high - low)
    data_ax.set_xlim(float(low[0] - margin[0]), float(high[0] + margin[0]))
    data_ax.set_ylim(float(low[1] - margin[1]), float(high[1] + margin[1]))
    data_ax.set_title(f"{run.method}: data plane (MSE {run.metrics['reconstruction_mse']:.4f})", fontsize=9)

    latent_ax.scatter(*latents.T, c=colors, cmap="tab20", s=3, linewidths=0)
    latent_ax.scatter(*codes[used].T, c="black", s=8, label="used codes")
    latent_ax.scatter(*codes[~used].T, c="red", marker="x", s=10, linewidths=0.7, label=f"dead codes ({num_dead})")
    latent_ax.set_title(
        f"{run.method}: latent plane ({int(used.sum())}/{len(codes)} codes used, "
        f"perplexity {run.metrics['perplexity']:.1f})",
        fontsize=9,
    )
    data_ax.set_aspect("equal", adjustable="box")
    latent_ax.set_aspect("equal", adjustable="datalim")
    for ax in (data_ax, latent_ax):
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=2, fontsize=7, markerscale=1.5)


def _new_figure(width: float, height: float, rows: int, cols: int):
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, cols, squeeze=False)


def plot_method(run: TopoDiscRun, points: torch.Tensor, path: str | Path) -> None:
    """Draw one run's data plane (data colored by code, reconstructions, decoded codes) and latent plane."""
    figure, axes = _new_figure(11, 4.8, 1, 2)
    _draw_planes(run, points, axes[0, 0], axes[0, 1])
    figure.suptitle(f"TopoDisc, method {run.method}, seed {run.seed}: points colored by their code", fontsize=10)
    figure.savefig(path, dpi=110)


def plot_overview(runs: list[TopoDiscRun], points: torch.Tensor, path: str | Path) -> None:
    """Draw the data and latent planes of several runs, one row per run."""
    figure, axes = _new_figure(11, 4.4 * len(runs), len(runs), 2)
    for row, run in enumerate(runs):
        _draw_planes(run, points, axes[row, 0], axes[row, 1])
    figure.savefig(path, dpi=80)


def plot_utilization_history(results: dict, path: str | Path) -> None:
    """Plot codebook utilization over training steps for every method: mean over seeds, min-max band."""
    settings = results["settings"]
    figure, axes = _new_figure(7, 4.2, 1, 1)
    ax = axes[0, 0]
    methods = [key for key in results if key != "settings"]
    # Several methods can reach the same curve (full utilization), so line styles keep each one visible.
    line_styles = ("-", "--", "-.", ":")
    for index, method in enumerate(methods):
        history = results[method]["codebook_utilization_history"]
        values = torch.tensor(history["per_seed"])  # [seeds, measurements]
        style = line_styles[index % len(line_styles)]
        line = ax.plot(history["steps"], values.mean(0), style, label=method, linewidth=1.6)[0]
        ax.fill_between(history["steps"], values.min(0).values, values.max(0).values, color=line.get_color(), alpha=0.2)
    warmup_end = settings["manifold_warmup_steps"]
    ax.axvline(warmup_end, color="gray", linestyle="--", linewidth=0.8)
    ax.axvline(warmup_end + settings["transition_steps"], color="gray", linestyle=":", linewidth=0.8)
    ax.set_xlabel("optimizer step (dashed: T_w, dotted: T_w + T_s; soft_only's transition ends at T_s)", fontsize=8)
    ax.set_ylabel("codebook utilization (held-out points, eval mode)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"TopoDisc: codebook utilization, {settings['codebook_size']} codes, mean and range over seeds")
    ax.legend(fontsize=8)
    figure.savefig(path, dpi=110)
