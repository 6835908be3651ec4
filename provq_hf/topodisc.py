"""TopoDisc: a 2-D experiment that makes premature discretization visible.

Points drawn uniformly from a disk and a triangle beside it are encoded by a small MLP into a 2-D
latent, quantized by the same `ProgressiveVectorQuantizer` and curriculum as the image tokenizer, and
decoded back to the plane. With 2-D data and a 2-D latent, both the reconstructions and the codes can
be drawn. Plain VQ (`vanilla`) starts from LlamaGen's random codebook, uniform in (-1/K, 1/K) and so
packed near the origin. Its latents then collapse onto a few codes before the encoder has learned the
shape of the data. ProVQ first learns the continuous autoencoder, then places the codes with K-Means on
the latents, and then hardens the quantization gradually.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .configuration_provq import METHODS, OMEGA_MODES, ProVQConfig
from .metrics import codebook_metrics, codebook_utilization
from .quantizer import ProgressiveVectorQuantizer, QuantizerOutput

logger = logging.getLogger(__name__)

# A disk of radius 1 left of the origin and a triangle with base 2 and height 2 right of it. The two
# shapes do not touch, and the triangle's straight edges show a grid of codes as a staircase.
DISK_CENTER = (-1.25, 0.0)
DISK_RADIUS = 1.0
TRIANGLE_VERTICES = ((0.25, -1.0), (2.25, -1.0), (1.25, 1.0))

METRIC_KEYS = ("reconstruction_mse", "chamfer_distance", "codebook_utilization", "perplexity", "dead_codes", "code_spread")
TABLE_KEYS = ("reconstruction_mse", "chamfer_distance", "codebook_utilization", "perplexity")
DATA_SEED_OFFSET = 1000


@dataclass
class TopoDiscSettings:
    """Settings of one TopoDisc run: data, model, optimization and curriculum lengths.

    The defaults make the plain-VQ failure visible: the codebook (256 codes) is large for 2-D data, so a
    healthy quantizer spreads its codes over the shapes and a collapsed one leaves most of them dead.
    """

    num_points: int = 8192  # training points (disk and triangle together)
    num_eval_points: int = 4096  # held-out points for the metrics and figures
    data_scale: float = 1.0  # factor on the coordinates of both shapes
    codebook_size: int = 256
    hidden_dim: int = 128  # width of the MLP encoder and decoder
    num_hidden_layers: int = 3
    steps: int = 2400  # optimizer steps, the same budget for every method
    batch_size: int = 256
    learning_rate: float = 2e-3
    manifold_warmup_steps: int = 800  # T_w
    transition_steps: int = 800  # T_s
    omega: str = "alpha"
    seeds: tuple[int, ...] = (0, 1, 2)
    log_every: int = 50  # steps between codebook-utilization measurements
    # The matrices are tiny, so extra threads mostly add synchronization. Measured with torch 2.14 on a
    # 2-core CPU shared with other jobs: 2 threads made training about 4x slower than 1.
    num_threads: int = 1

    @classmethod
    def small(cls) -> "TopoDiscSettings":
        """Settings for a run of a few seconds (tests): fewer points, steps and codes.

        As in the defaults, the warmup and the transition each take a third of the steps.
        """
        return cls(
            num_points=2048,
            num_eval_points=1024,
            codebook_size=64,
            hidden_dim=64,
            num_hidden_layers=2,
            steps=240,
            batch_size=128,
            manifold_warmup_steps=80,
            transition_steps=80,
            log_every=25,
        )

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid setting."""
        positive = (
            "num_points",
            "num_eval_points",
            "codebook_size",
            "hidden_dim",
            "num_hidden_layers",
            "steps",
            "batch_size",
            "log_every",
            "num_threads",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TopoDisc setting {name} must be a positive integer, got {value!r}.")
        for name in ("manifold_warmup_steps", "transition_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"TopoDisc setting {name} must be a non-negative integer, got {value!r}.")
        if self.data_scale <= 0 or self.learning_rate <= 0:
            raise ValueError(
                f"data_scale and learning_rate must be positive, got {self.data_scale} and {self.learning_rate}."
            )
        if self.omega not in OMEGA_MODES:
            raise ValueError(f"Unknown omega {self.omega!r}; expected one of {OMEGA_MODES}.")
        if not self.seeds:
            raise ValueError("TopoDisc needs at least one seed.")
        if self.manifold_warmup_steps + self.transition_steps > self.steps:
            raise ValueError(
                f"manifold_warmup_steps + transition_steps ({self.manifold_warmup_steps} + {self.transition_steps}) "
                f"exceeds steps ({self.steps}); the curriculum would never reach the discrete phase."
            )

    def provq_config(self, method: str) -> ProVQConfig:
        """Build the tokenizer config that maps `method` to its curriculum, for a 2-D unnormalized codebook."""
        return ProVQConfig(
            method=method,
            manifold_warmup_steps=self.manifold_warmup_steps,
            transition_steps=self.transition_steps,
            omega=self.omega,
            codebook_size=self.codebook_size,
            codebook_dim=2,
            codebook_l2_norm=False,
        )


# Data.
def sample_disk_and_triangle(num_points: int, generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Sample `num_points` points `[N, 2]` uniformly from the union of the disk and the triangle.

    Each point picks its shape with probability proportional to the shape's area, so the density is the
    same everywhere on the union.
    """
    disk_area = math.pi * DISK_RADIUS**2
    (ax, ay), (bx, by), (cx, cy) = TRIANGLE_VERTICES
    triangle_area = 0.5 * abs((bx - ax) * (cy - ay) - (cx - ax) * (by - ay))
    in_disk = torch.rand(num_points, generator=generator) < disk_area / (disk_area + triangle_area)

    # Disk: radius r = R sqrt(u) makes the density uniform in area.
    radius = DISK_RADIUS * torch.rand(num_points, generator=generator).sqrt()
    angle = 2 * math.pi * torch.rand(num_points, generator=generator)
    disk = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1) + torch.tensor(DISK_CENTER)

    # Triangle: a point of the parallelogram A + u (B - A) + v (C - A), folded back when u + v > 1.
    u, v = torch.rand(2, num_points, generator=generator)
    fold = u + v > 1
    u, v = torch.where(fold, 1 - u, u), torch.where(fold, 1 - v, v)
    a, b, c = (torch.tensor(vertex) for vertex in TRIANGLE_VERTICES)
    triangle = a + u[:, None] * (b - a) + v[:, None] * (c - a)

    return scale * torch.where(in_disk[:, None], disk, triangle)


# Model.
def _mlp(in_dim: int, hidden_dim: int, num_hidden_layers: int, out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.SiLU()]
    for _ in range(num_hidden_layers - 1):
        layers += [nn.Linear(hidden_dim, hidden_dim), nn.SiLU()]
    layers.append(nn.Linear(hidden_dim, out_dim))
    return nn.Sequential(*layers)


class TopoDiscAutoencoder(nn.Module):
    """MLP encoder, 2-D `ProgressiveVectorQuantizer` and MLP decoder for points in the plane."""

    def __init__(self, config: ProVQConfig, hidden_dim: int, num_hidden_layers: int):
        super().__init__()
        self.config = config
        self.encoder = _mlp(2, hidden_dim, num_hidden_layers, config.codebook_dim)
        self.quantizer = ProgressiveVectorQuantizer.from_config(config)
        self.decoder = _mlp(config.codebook_dim, hidden_dim, num_hidden_layers, 2)

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """Encode, quantize and decode `points` `[N, 2]`, and return the reconstructions and the quantizer output."""
        quantized = self.quantizer(self.encoder(points))
        return self.decoder(quantized.decoder_input), quantized


# Metrics.
def chamfer_distance(points: torch.Tensor, other: torch.Tensor, chunk_rows: int = 4096) -> float:
    """Compute the symmetric Chamfer distance between two point sets `[N, D]` and `[M, D]`.

    Defined as mean_x min_y ||x - y|| + mean_y min_x ||x - y||, with Euclidean (not squared) distances,
    so it is in the units of the data. Duplicate points count as often as they occur.
    """

    def mean_nearest_distance(source: torch.Tensor, target: torch.Tensor) -> float:
        # The direct difference form gives exactly 0 for identical points, unlike the matrix-product form.
        nearest = [
            torch.cdist(chunk, target, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
            for chunk in source.split(chunk_rows)
        ]
        return float(torch.cat(nearest).double().mean())

    return mean_nearest_distance(points, other) + mean_nearest_distance(other, points)


@torch.no_grad()
def evaluate_topodisc(model: TopoDiscAutoencoder, points: torch.Tensor) -> dict[str, float | int]:
    """Score `model` on `points` `[N, 2]` in eval mode, where the quantizer is fully discrete."""
    was_training = model.training
    model.eval()
    reconstructions, quantized = model(points)
    model.train(was_training)
    return {
        "reconstruction_mse": float(F.mse_loss(reconstructions, points)),
        "chamfer_distance": chamfer_distance(points, reconstructions),
        **codebook_metrics(quantized.ids, model.quantizer.codes()),
    }


@torch.no_grad()
def codebook_utilization_on(model: TopoDiscAutoencoder, points: torch.Tensor) -> float:
    """Return the share of codes that `points` `[N, 2]` use when quantized in eval mode."""
    ids = model.quantizer.nearest_code_ids(model.encoder(points))
    return codebook_utilization(ids, model.quantizer.codebook_size)


# Training.
@dataclass
class TopoDiscRun:
    """A trained model with its metrics on the held-out points and its codebook utilization over training."""

    method: str
    seed: int
    model: TopoDiscAutoencoder
    metrics: dict[str, float | int]
    history_steps: list[int]
    history_utilization: list[float]


def train_topodisc(
    method: str, seed: int, settings: TopoDiscSettings, train_points: torch.Tensor, eval_points: torch.Tensor
) -> TopoDiscRun:
    """Train one TopoDisc autoencoder with `method`'s curriculum for `settings.steps` optimizer steps.

    `seed` sets the weight init, the batch order and the K-Means seeding. Every `settings.log_every`
    steps the codebook utilization of `eval_points` is measured in eval mode (fully discrete), so during
    a warmup it is the utilization the current codebook would have, not that of the decoder input. Torch
    runs on `settings.num_threads` threads during training, and the previous thread count is restored.
    """
    previous_num_threads = torch.get_num_threads()
    torch.set_num_threads(settings.num_threads)
    try:
        return _train(method, seed, settings, train_points, eval_points)
    finally:
        torch.set_num_threads(previous_num_threads)


def _train(
    method: str, seed: int, settings: TopoDiscSettings, train_points: torch.Tensor, eval_points: torch.Tensor
) -> TopoDiscRun:
    config = settings.provq_config(method)
    torch.manual_seed(seed)
    model = TopoDiscAutoencoder(config, settings.hidden_dim, settings.num_hidden_layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    batch_generator = torch.Generator().manual_seed(seed)
    history_steps, history_utilization = [], []

    model.train()
    for step in range(settings.steps):
        if model.quantizer.needs_codebook_init():
            with torch.no_grad():
                latents = model.encoder(train_points)
            model.quantizer.init_codebook(
                latents, num_iters=config.kmeans_iters, max_samples=config.kmeans_num_samples, seed=seed
            )
            logger.info(f"{method} seed {seed}: codebook initialized by K-Means at step {step}")

        batch = train_points[torch.randint(len(train_points), (settings.batch_size,), generator=batch_generator)]
        reconstructions, quantized = model(batch)
        loss = F.mse_loss(reconstructions, batch) + quantized.vq_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.quantizer.step_curriculum()

        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            history_steps.append(step + 1)
            history_utilization.append(codebook_utilization_on(model, eval_points))

    metrics = evaluate_topodisc(model, eval_points)
    logger.info(f"{method} seed {seed}: " + ", ".join(f"{key} {value:.4g}" for key, value in metrics.items()))
    return TopoDiscRun(method, seed, model, metrics, history_steps, history_utilization)


def sample_topodisc_data(seed: int, settings: TopoDiscSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample the training and held-out points of one seed. Every method trained with `seed` gets the same points."""
    # Offset the seed so the data and the batch order (seeded with `seed`) come from different streams.
    generator = torch.Generator().manual_seed(DATA_SEED_OFFSET + seed)
    train_points = sample_disk_and_triangle(settings.num_points, generator, settings.data_scale)
    eval_points = sample_disk_and_triangle(settings.num_eval_points, generator, settings.data_scale)
    return train_points, eval_points


# Aggregation and reports.
def summarize_runs(runs: list[TopoDiscRun]) -> dict:
    """Aggregate the runs of one method over seeds: mean, sample standard deviation and per-seed values."""
    summary = {}
    for key in METRIC_KEYS:
        values = torch.tensor([float(run.metrics[key]) for run in runs], dtype=torch.float64)
        std = float(values.std()) if len(values) > 1 else 0.0  # sample std (n - 1 in the denominator)
        summary[key] = {"mean": float(values.mean()), "std": std, "per_seed": values.tolist()}
    summary["seeds"] = [run.seed for run in runs]
    summary["codebook_utilization_history"] = {
        "steps": runs[0].history_steps,
        "per_seed": [run.history_utilization for run in runs],
    }
    return summary


def format_results_table(results: dict) -> str:
    """Render the per-method metrics of `results` (as written to results.json) as a markdown table."""
    settings = results["settings"]
    methods = [key for key in results if key != "settings"]
    lines = [
        "| method | reconstruction MSE | Chamfer distance | codebook utilization | perplexity |",
        "|---|---|---|---|---|",
    ]
    for method in methods:
        cells = [f"{results[method][key]['mean']:.4f} ± {results[method][key]['std']:.4f}" for key in TABLE_KEYS[:3]]
        perplexity = results[method]["perplexity"]
        cells.append(f"{perplexity['mean']:.1f} ± {perplexity['std']:.1f}")
        lines.append(f"| `{method}` | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Mean ± sample standard deviation over seeds {list(settings['seeds'])}, on {settings['num_eval_points']} "
        f"held-out points, in eval mode (fully discrete). {settings['codebook_size']} codes of dimension 2, not "
        f"l2-normalized; {settings['steps']} optimizer steps for every method; manifold warmup "
        f"{settings['manifold_warmup_steps']} steps and transition {settings['transition_steps']} steps where the "
        f"method has them; VQ-loss weight `omega={settings['omega']}`. Chamfer distance: mean nearest-neighbour "
        "Euclidean distance from data to reconstructions plus from reconstructions to data. Perplexity: exp of "
        "the entropy of the code histogram."
    )
    return "\n".join(lines) + "\n"


def run_topodisc(
    settings: TopoDiscSettings, output_dir: str | Path, methods: tuple[str, ...] | list[str] = METHODS
) -> dict:
    """Train every method on every seed, then write results.json, results.md and the figures to `output_dir`.

    Returns the dictionary written to results.json: one entry per method name plus `settings`.
    """
    settings.validate()
    unknown = [method for method in methods if method not in METHODS]
    if unknown or not methods:
        raise ValueError(f"Invalid TopoDisc methods {list(methods)}; expected a non-empty subset of {METHODS}.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    runs: dict[str, list[TopoDiscRun]] = {method: [] for method in methods}
    data = {seed: sample_topodisc_data(seed, settings) for seed in settings.seeds}
    for method in methods:
        for seed in settings.seeds:
            runs[method].append(train_topodisc(method, seed, settings, *data[seed]))

    results = {"settings": dataclasses.asdict(settings)}
    results["settings"]["seeds"] = list(settings.seeds)
    results.update({method: summarize_runs(method_runs) for method, method_runs in runs.items()})
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output_dir / "results.md").write_text(format_results_table(results))

    # The figures show the first seed of each method. Imported here because the plots module imports this one.
    from .topodisc_plots import plot_method, plot_overview, plot_utilization_history

    first_seed = settings.seeds[0]
    eval_points = data[first_seed][1]
    for method in methods:
        plot_method(runs[method][0], eval_points, output_dir / f"{method}.png")
    plot_overview([runs[method][0] for method in methods], eval_points, output_dir / "overview.png")
    plot_utilization_history(results, output_dir / "codebook_utilization.png")
    logger.info(f"TopoDisc results and figures written to {output_dir}")
    return results
