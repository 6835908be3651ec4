"""Tests of the ProVQ curriculum: phases, the blend a(t), the VQ weight w(t), and each method's schedule."""

import math

import pytest
import torch

from provq_hf import ProVQConfig, ProVQTokenizer, curriculum_state

WARMUP_STEPS = 100
TRANSITION_STEPS = 40


def cosine_alpha(step, warmup_steps=WARMUP_STEPS, transition_steps=TRANSITION_STEPS):
    return 0.5 * (1.0 - math.cos(math.pi * (step - warmup_steps) / transition_steps))


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_last_warmup_step(schedule):
    state = curriculum_state(WARMUP_STEPS - 1, WARMUP_STEPS, TRANSITION_STEPS, schedule)

    assert state.phase == "warmup"
    assert state.alpha == 0.0
    assert state.omega == 0.0
    assert state.step == WARMUP_STEPS - 1


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_first_transition_step(schedule):
    state = curriculum_state(WARMUP_STEPS, WARMUP_STEPS, TRANSITION_STEPS, schedule)

    assert state.phase == "transition"
    assert state.alpha == 0.0
    assert state.omega == 0.0


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_transition_midpoint_is_half(schedule):
    state = curriculum_state(WARMUP_STEPS + TRANSITION_STEPS // 2, WARMUP_STEPS, TRANSITION_STEPS, schedule)

    assert state.phase == "transition"
    assert state.alpha == pytest.approx(0.5, abs=1e-12)
    assert state.omega == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_last_transition_step(schedule):
    step = WARMUP_STEPS + TRANSITION_STEPS - 1
    state = curriculum_state(step, WARMUP_STEPS, TRANSITION_STEPS, schedule)

    expected = cosine_alpha(step) if schedule == "cosine" else (TRANSITION_STEPS - 1) / TRANSITION_STEPS
    assert state.phase == "transition"
    assert state.alpha == pytest.approx(expected, abs=1e-12)
    assert state.alpha < 1.0


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_first_discrete_step(schedule):
    state = curriculum_state(WARMUP_STEPS + TRANSITION_STEPS, WARMUP_STEPS, TRANSITION_STEPS, schedule)

    assert state.phase == "discrete"
    assert state.alpha == 1.0
    assert state.omega == 1.0


def test_discrete_long_after_transition():
    state = curriculum_state(10**6, WARMUP_STEPS, TRANSITION_STEPS)

    assert state.phase == "discrete"
    assert state.alpha == 1.0


@pytest.mark.parametrize("offset", [1, 5, 13, 27, 39])
def test_cosine_matches_closed_form(offset):
    step = WARMUP_STEPS + offset
    state = curriculum_state(step, WARMUP_STEPS, TRANSITION_STEPS, "cosine")

    assert state.alpha == pytest.approx(cosine_alpha(step), abs=1e-12)


@pytest.mark.parametrize("offset", [1, 5, 13, 27, 39])
def test_linear_matches_closed_form(offset):
    state = curriculum_state(WARMUP_STEPS + offset, WARMUP_STEPS, TRANSITION_STEPS, "linear")

    assert state.alpha == pytest.approx(offset / TRANSITION_STEPS, abs=1e-12)


def test_cosine_differs_from_linear():
    step = WARMUP_STEPS + TRANSITION_STEPS // 4
    cosine = curriculum_state(step, WARMUP_STEPS, TRANSITION_STEPS, "cosine")
    linear = curriculum_state(step, WARMUP_STEPS, TRANSITION_STEPS, "linear")

    # At a quarter of the transition the cosine blend is 0.146, below the linear 0.25.
    assert cosine.alpha == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)), abs=1e-12)
    assert cosine.alpha < linear.alpha


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_alpha_monotonic_over_transition(schedule):
    alphas = [
        curriculum_state(step, WARMUP_STEPS, TRANSITION_STEPS, schedule).alpha
        for step in range(WARMUP_STEPS - 2, WARMUP_STEPS + TRANSITION_STEPS + 2)
    ]

    assert all(later > earlier for earlier, later in zip(alphas[2:-2], alphas[3:-1]))
    assert min(alphas) == 0.0
    assert max(alphas) == 1.0


def test_zero_transition_is_hard_switch():
    before = curriculum_state(WARMUP_STEPS - 1, WARMUP_STEPS, 0)
    after = curriculum_state(WARMUP_STEPS, WARMUP_STEPS, 0)

    assert (before.phase, before.alpha, before.omega) == ("warmup", 0.0, 0.0)
    assert (after.phase, after.alpha, after.omega) == ("discrete", 1.0, 1.0)


def test_zero_warmup_and_transition_is_discrete_at_start():
    state = curriculum_state(0, 0, 0)

    assert state.phase == "discrete"
    assert state.alpha == 1.0


@pytest.mark.parametrize("step", [WARMUP_STEPS + 1, WARMUP_STEPS + 10, WARMUP_STEPS + 30])
def test_omega_alpha_follows_blend(step):
    state = curriculum_state(step, WARMUP_STEPS, TRANSITION_STEPS, omega="alpha")

    assert state.omega == state.alpha
    assert 0.0 < state.omega < 1.0


@pytest.mark.parametrize("step", [WARMUP_STEPS, WARMUP_STEPS + 1, WARMUP_STEPS + 30])
def test_omega_constant_is_one_in_transition(step):
    state = curriculum_state(step, WARMUP_STEPS, TRANSITION_STEPS, omega="constant")

    assert state.phase == "transition"
    assert state.omega == 1.0


@pytest.mark.parametrize("omega", ["alpha", "constant"])
def test_omega_zero_during_warmup(omega):
    for step in (0, WARMUP_STEPS // 2, WARMUP_STEPS - 1):
        assert curriculum_state(step, WARMUP_STEPS, TRANSITION_STEPS, omega=omega).omega == 0.0


def test_unknown_schedule_rejected():
    with pytest.raises(ValueError, match="exponential"):
        curriculum_state(0, WARMUP_STEPS, TRANSITION_STEPS, schedule="exponential")


def test_unknown_omega_rejected():
    with pytest.raises(ValueError, match="learned"):
        curriculum_state(0, WARMUP_STEPS, TRANSITION_STEPS, omega="learned")


# Each method, configured through ProVQConfig alone, driven through the model's quantizer.
def trace_method(method, warmup_steps=4, transition_steps=4, steps=10):
    """Return [(phase, alpha, needs_codebook_init)] for steps 0..steps-1 of a fresh tokenizer."""
    config = ProVQConfig.from_preset(
        "mnist-5k",
        method=method,
        manifold_warmup_steps=warmup_steps,
        transition_steps=transition_steps,
        base_channels=32,
        z_channels=32,
    )
    model = ProVQTokenizer(config).train()
    trace = []
    for _ in range(steps):
        state = model.quantizer.curriculum()
        trace.append((state.phase, state.alpha, model.needs_codebook_init()))
        model.step_curriculum()
    return trace


def phases(trace):
    return [phase for phase, _, _ in trace]


def test_method_vanilla_sequence():
    trace = trace_method("vanilla")

    assert phases(trace) == ["discrete"] * 10
    assert all(alpha == 1.0 for _, alpha, _ in trace)
    assert not any(needs_init for _, _, needs_init in trace)


def test_method_warmup_hard_sequence():
    trace = trace_method("warmup_hard")

    assert phases(trace) == ["warmup"] * 4 + ["discrete"] * 6
    assert [needs_init for _, _, needs_init in trace] == [False] * 4 + [True] * 6


def test_method_soft_only_sequence():
    trace = trace_method("soft_only")

    assert phases(trace) == ["transition"] * 4 + ["discrete"] * 6
    assert trace[0][1] == 0.0
    assert trace[2][1] == pytest.approx(0.5, abs=1e-12)
    assert trace[0][2] is True


def test_method_provq_cosine_sequence():
    trace = trace_method("provq_cosine")

    assert phases(trace) == ["warmup"] * 4 + ["transition"] * 4 + ["discrete"] * 2
    assert [alpha for _, alpha, _ in trace[4:8]] == pytest.approx([cosine_alpha(s, 4, 4) for s in range(4, 8)])
    assert [needs_init for _, _, needs_init in trace] == [False] * 4 + [True] * 6


def test_method_provq_alias_sequence():
    assert trace_method("provq") == trace_method("provq_cosine")


def test_method_provq_linear_sequence():
    trace = trace_method("provq_linear")

    assert phases(trace) == ["warmup"] * 4 + ["transition"] * 4 + ["discrete"] * 2
    assert [alpha for _, alpha, _ in trace[4:8]] == pytest.approx([0.0, 0.25, 0.5, 0.75])


def test_codebook_init_clears_need():
    config = ProVQConfig.from_preset("mnist-5k", method="soft_only", base_channels=32, z_channels=32)
    model = ProVQTokenizer(config)
    assert model.needs_codebook_init()

    model.init_codebook(torch.randn(600, 8))

    assert not model.needs_codebook_init()
    assert model.codebook_initialized
