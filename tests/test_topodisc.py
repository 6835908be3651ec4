"""Tests of the TopoDisc 2-D diagnostic: data, curriculum mapping, metrics, and a small end-to-end run."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from provq_hf.configuration_provq import METHODS
from provq_hf.topodisc import (
    DISK_CENTER,
    DISK_RADIUS,
    TRIANGLE_VERTICES,
    TopoDiscAutoencoder,
    TopoDiscSettings,
    chamfer_distance,
    sample_disk_and_triangle,
    sample_topodisc_data,
    train_topodisc,
)

SCRIPT_PATH = Path(__file__).resolve().parents[1] / "scripts" / "topodisc.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COMPARED_METHODS = ("vanilla", "provq_cosine")


def load_script():
    spec = importlib.util.spec_from_file_location("topodisc_script", SCRIPT_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[Path, dict]:
    """Run the CLI with --small on the two methods the acceptance check compares (3 seeds, a few seconds)."""
    output_dir = tmp_path_factory.mktemp("topodisc")
    load_script().main(["--small", "--methods", *COMPARED_METHODS, "--output_dir", str(output_dir)])
    results = json.loads((output_dir / "results.json").read_text())
    return output_dir, results


def in_triangle(points: torch.Tensor) -> torch.Tensor:
    (ax, ay), (bx, by), (cx, cy) = TRIANGLE_VERTICES
    # Barycentric coordinates of each point. All three are >= 0 inside the triangle.
    det = (by - cy) * (ax - cx) + (cx - bx) * (ay - cy)
    l1 = ((by - cy) * (points[:, 0] - cx) + (cx - bx) * (points[:, 1] - cy)) / det
    l2 = ((cy - ay) * (points[:, 0] - cx) + (ax - cx) * (points[:, 1] - cy)) / det
    l3 = 1 - l1 - l2
    tolerance = 1e-6
    return (l1 >= -tolerance) & (l2 >= -tolerance) & (l3 >= -tolerance)


def test_sample_disk_and_triangle_points_lie_on_shapes():
    points = sample_disk_and_triangle(20000, torch.Generator().manual_seed(0))
    in_disk = (points - torch.tensor(DISK_CENTER)).norm(dim=1) <= DISK_RADIUS + 1e-6
    assert points.shape == (20000, 2)
    assert bool((in_disk | in_triangle(points)).all())
    # The shapes are chosen by area: pi for the disk, 2 for the triangle.
    disk_share = float(in_disk.float().mean())
    assert disk_share == pytest.approx(math.pi / (math.pi + 2.0), abs=0.02)


def test_sample_disk_and_triangle_is_seeded():
    first = sample_disk_and_triangle(100, torch.Generator().manual_seed(3), scale=2.0)
    second = sample_disk_and_triangle(100, torch.Generator().manual_seed(3), scale=2.0)
    other_seed = sample_disk_and_triangle(100, torch.Generator().manual_seed(4), scale=2.0)
    assert torch.equal(first, second)
    assert not torch.equal(first, other_seed)


@pytest.mark.parametrize("method", METHODS)
def test_topodisc_quantizer_follows_method_curriculum(method):
    settings = TopoDiscSettings.small()
    config = settings.provq_config(method)
    quantizer = TopoDiscAutoencoder(config, hidden_dim=8, num_hidden_layers=1).quantizer
    assert quantizer.manifold_warmup_steps == config.effective_manifold_warmup_steps
    assert quantizer.transition_steps == config.effective_transition_steps
    assert quantizer.schedule == config.schedule
    assert quantizer.uses_kmeans_init == config.uses_kmeans_init
    assert quantizer.codebook_dim == 2
    assert not quantizer.l2_norm


def test_topodisc_settings_reject_curriculum_longer_than_steps():
    settings = dataclasses.replace(TopoDiscSettings.small(), steps=100, manifold_warmup_steps=80, transition_steps=80)
    with pytest.raises(ValueError, match="exceeds steps"):
        settings.validate()


def test_chamfer_distance_of_identical_sets_is_zero():
    points = sample_disk_and_triangle(300, torch.Generator().manual_seed(0))
    assert chamfer_distance(points, points) == pytest.approx(0.0, abs=1e-6)


def test_chamfer_distance_of_distant_point_sets():
    points = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    shifted = points + torch.tensor([3.0, 0.0])
    # Every point's nearest neighbour in the other set is its own shifted copy, 3 away, in both directions.
    assert chamfer_distance(points, shifted, chunk_rows=1) == pytest.approx(6.0)


def test_train_topodisc_is_reproducible():
    settings = dataclasses.replace(
        TopoDiscSettings.small(), steps=30, manifold_warmup_steps=10, transition_steps=10, log_every=10
    )
    train_points, eval_points = sample_topodisc_data(0, settings)
    first = train_topodisc("provq_cosine", 0, settings, train_points, eval_points)
    second = train_topodisc("provq_cosine", 0, settings, train_points, eval_points)
    assert first.metrics == second.metrics
    assert first.history_utilization == second.history_utilization
    assert first.history_steps == [10, 20, 30]


def test_topodisc_script_help_states_default_reason(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script().parse_args(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "Why the defaults" in help_text
    assert "--small" in help_text


def test_topodisc_small_run_writes_outputs(small_run):
    output_dir, results = small_run
    expected_pngs = [f"{method}.png" for method in COMPARED_METHODS] + ["overview.png", "codebook_utilization.png"]
    for name in expected_pngs:
        assert (output_dir / name).read_bytes()[:8] == PNG_SIGNATURE, name
    assert set(results) == {"settings", *COMPARED_METHODS}
    table = (output_dir / "results.md").read_text()
    for method in COMPARED_METHODS:
        assert f"| `{method}` |" in table


def test_topodisc_small_run_provq_cosine_beats_vanilla(small_run):
    _, results = small_run
    vanilla, provq = results["vanilla"], results["provq_cosine"]
    assert len(results["settings"]["seeds"]) >= 3
    assert len(provq["reconstruction_mse"]["per_seed"]) == len(results["settings"]["seeds"])
    assert provq["reconstruction_mse"]["mean"] < vanilla["reconstruction_mse"]["mean"]
    assert provq["perplexity"]["mean"] > vanilla["perplexity"]["mean"]
    assert provq["codebook_utilization"]["mean"] >= vanilla["codebook_utilization"]["mean"]
