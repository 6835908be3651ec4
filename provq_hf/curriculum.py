"""The progressive quantization curriculum: which phase a step is in and how hard quantization is.

Phases, with `T_w` the manifold warmup and `T_s` the transition length (both in optimizer steps):

    warmup      t < T_w              decoder input z,                                   loss = rec
    transition  T_w <= t < T_w+T_s   decoder input z + a(t) * stopgrad(z_q - z),         loss = rec + w(t) * vq
    discrete    t >= T_w + T_s       decoder input z + stopgrad(z_q - z) (straight-through), loss = rec + vq

with `a(t) = 0.5 * (1 - cos(pi * (t - T_w) / T_s))` (or `(t - T_w) / T_s` for the linear ablation) and
`vq = codebook + beta * commitment`. The VQ weight `w(t)` is `a(t)` by default, or 1 from `T_w` on with
`omega="constant"`. It is 0 during the warmup either way, so the warmup trains reconstruction only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WARMUP, TRANSITION, DISCRETE = "warmup", "transition", "discrete"
PHASES = (WARMUP, TRANSITION, DISCRETE)


@dataclass(frozen=True)
class CurriculumState:
    """Curriculum values in force at one optimizer step."""

    step: int
    phase: str
    alpha: float  # quantization hardness a(t) in [0, 1]
    omega: float  # weight w(t) of codebook + beta * commitment


def curriculum_state(
    step: int,
    manifold_warmup_steps: int,
    transition_steps: int,
    schedule: str = "cosine",
    omega: str = "alpha",
) -> CurriculumState:
    """Compute phase, `a(t)` and `w(t)` at optimizer step `step`."""
    if schedule not in ("cosine", "linear"):
        raise ValueError(f"Unknown schedule {schedule!r}; expected 'cosine' or 'linear'.")
    if omega not in ("alpha", "constant"):
        raise ValueError(f"Unknown omega {omega!r}; expected 'alpha' or 'constant'.")

    if step < manifold_warmup_steps:
        return CurriculumState(step, WARMUP, 0.0, 0.0)
    if step >= manifold_warmup_steps + transition_steps:
        return CurriculumState(step, DISCRETE, 1.0, 1.0)

    progress = (step - manifold_warmup_steps) / transition_steps  # in [0, 1)
    if schedule == "cosine":
        alpha = 0.5 * (1.0 - math.cos(math.pi * progress))
    else:
        alpha = progress
    weight = alpha if omega == "alpha" else 1.0
    return CurriculumState(step, TRANSITION, alpha, weight)
