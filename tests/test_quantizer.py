"""Tests of ProgressiveVectorQuantizer: the blend, gradient paths, loss terms, dtypes and edge cases."""

import pytest
import torch

from provq_hf import ProgressiveVectorQuantizer

CODEBOOK_SIZE = 64
CODEBOOK_DIM = 8
WARMUP_STEPS = 2
TRANSITION_STEPS = 4
# Curriculum step that lands in each phase for WARMUP_STEPS=2, TRANSITION_STEPS=4 (cosine, alpha(4) = 0.5).
PHASE_STEPS = {"warmup": 0, "transition": 4, "discrete": 6}


def make_quantizer(step=0, l2_norm=False, beta=0.25, omega="alpha", seed=0):
    torch.manual_seed(seed)
    quantizer = ProgressiveVectorQuantizer(
        CODEBOOK_SIZE,
        CODEBOOK_DIM,
        l2_norm=l2_norm,
        commitment_beta=beta,
        manifold_warmup_steps=WARMUP_STEPS,
        transition_steps=TRANSITION_STEPS,
        omega=omega,
    )
    # Spread-out codes, so different latents pick different codes.
    with torch.no_grad():
        quantizer.codebook.weight.copy_(torch.randn(CODEBOOK_SIZE, CODEBOOK_DIM))
    quantizer.step_curriculum(step)
    return quantizer.train()


def make_latents(shape=(2, 4, 4, CODEBOOK_DIM), seed=1, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).requires_grad_(requires_grad)


@pytest.mark.parametrize("phase", ["warmup", "transition", "discrete"])
def test_curriculum_phase_at_step(phase):
    assert make_quantizer(PHASE_STEPS[phase]).curriculum().phase == phase


def test_alpha_zero_feeds_latents_exactly():
    out = make_quantizer(PHASE_STEPS["warmup"])(make_latents())

    assert out.curriculum.alpha == 0.0
    assert torch.equal(out.decoder_input, out.latents)
    assert not torch.equal(out.decoder_input, out.quantized)


def test_alpha_zero_at_transition_start_feeds_latents_exactly():
    out = make_quantizer(WARMUP_STEPS)(make_latents())

    assert out.curriculum.phase == "transition"
    assert torch.equal(out.decoder_input, out.latents)


def test_alpha_one_feeds_codes_exactly():
    out = make_quantizer(PHASE_STEPS["discrete"])(make_latents())

    assert out.curriculum.alpha == 1.0
    assert torch.equal(out.decoder_input, out.quantized)


def test_transition_blends_latents_and_codes():
    out = make_quantizer(PHASE_STEPS["transition"])(make_latents())

    expected = 0.5 * out.latents + 0.5 * out.quantized
    assert out.curriculum.alpha == pytest.approx(0.5)
    assert torch.allclose(out.decoder_input, expected, atol=1e-6)


def test_quantized_is_nearest_code():
    quantizer = make_quantizer(PHASE_STEPS["discrete"])
    latents = make_latents()
    out = quantizer(latents)

    distances = torch.cdist(latents.reshape(-1, CODEBOOK_DIM), quantizer.codebook.weight)
    assert torch.equal(out.ids.reshape(-1), distances.argmin(dim=1))
    assert torch.equal(out.quantized, quantizer.codebook.weight[out.ids])
    assert out.ids.shape == latents.shape[:-1]


@pytest.mark.parametrize("phase", ["warmup", "transition", "discrete"])
def test_decoder_input_gradient_reaches_latents(phase):
    latents = make_latents(requires_grad=True)
    upstream = torch.randn(latents.shape)
    out = make_quantizer(PHASE_STEPS[phase])(latents)

    (out.decoder_input * upstream).sum().backward()

    # Straight-through: the decoder input's gradient reaches the latents unchanged in every phase.
    assert torch.equal(latents.grad, upstream)


@pytest.mark.parametrize("phase", ["warmup", "transition", "discrete"])
def test_decoder_input_gradient_reaches_latents_with_l2_norm(phase):
    latents = make_latents(requires_grad=True)
    out = make_quantizer(PHASE_STEPS[phase], l2_norm=True)(latents)

    (out.decoder_input * torch.randn(latents.shape)).sum().backward()

    assert latents.grad is not None
    assert latents.grad.abs().sum() > 0


def test_decoder_input_gives_codebook_no_gradient():
    quantizer = make_quantizer(PHASE_STEPS["discrete"])
    out = quantizer(make_latents(requires_grad=True))

    out.decoder_input.sum().backward()

    grad = quantizer.codebook.weight.grad
    assert grad is None or torch.count_nonzero(grad) == 0


def test_codebook_gets_gradient_when_discrete():
    quantizer = make_quantizer(PHASE_STEPS["discrete"])
    out = quantizer(make_latents())

    out.vq_loss.backward()

    used = out.ids.unique()
    grad = quantizer.codebook.weight.grad
    assert torch.count_nonzero(grad[used].abs().sum(dim=1)) == len(used)


def test_codebook_gets_gradient_in_transition():
    quantizer = make_quantizer(PHASE_STEPS["transition"])
    out = quantizer(make_latents())

    out.vq_loss.backward()

    assert quantizer.codebook.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("omega", ["alpha", "constant"])
def test_codebook_gets_no_gradient_in_warmup(omega):
    quantizer = make_quantizer(PHASE_STEPS["warmup"], omega=omega)
    out = quantizer(make_latents(requires_grad=True))

    (out.decoder_input.sum() + out.vq_loss).backward()

    grad = quantizer.codebook.weight.grad
    assert out.vq_loss.item() == 0.0
    assert grad is None or torch.count_nonzero(grad) == 0


def test_loss_terms_equal_squared_distance():
    out = make_quantizer(PHASE_STEPS["discrete"])(make_latents())

    expected = (out.latents - out.quantized).pow(2).mean()
    assert torch.allclose(out.codebook_loss, expected)
    assert torch.allclose(out.commitment_loss, expected)


@pytest.mark.parametrize("beta", [0.0, 0.25, 1.0])
def test_vq_loss_weights_commitment_by_beta(beta):
    out = make_quantizer(PHASE_STEPS["discrete"], beta=beta)(make_latents())

    expected = out.codebook_loss + beta * out.commitment_loss
    assert torch.allclose(out.vq_loss, expected)


def test_vq_loss_scaled_by_omega_in_transition():
    out = make_quantizer(PHASE_STEPS["transition"])(make_latents())

    expected = out.curriculum.omega * (out.codebook_loss + 0.25 * out.commitment_loss)
    assert out.curriculum.omega == pytest.approx(0.5)
    assert torch.allclose(out.vq_loss, expected)


def codebook_and_latent_grads(beta):
    quantizer = make_quantizer(PHASE_STEPS["discrete"], beta=beta)
    latents = make_latents(requires_grad=True)
    quantizer(latents).vq_loss.backward()
    return quantizer.codebook.weight.grad, latents.grad


def test_beta_does_not_scale_codebook_gradient():
    codebook_grad_low, _ = codebook_and_latent_grads(0.25)
    codebook_grad_high, _ = codebook_and_latent_grads(2.0)

    assert codebook_grad_low.abs().sum() > 0
    assert torch.equal(codebook_grad_low, codebook_grad_high)


def test_beta_scales_latent_gradient():
    _, latent_grad_zero = codebook_and_latent_grads(0.0)
    _, latent_grad_low = codebook_and_latent_grads(0.25)
    _, latent_grad_high = codebook_and_latent_grads(1.0)

    # The codebook term detaches z, so with beta = 0 the VQ loss sends the latents nothing.
    assert torch.count_nonzero(latent_grad_zero) == 0
    assert torch.allclose(latent_grad_high, 4.0 * latent_grad_low)


def test_autocast_bf16_keeps_float32():
    quantizer = make_quantizer(PHASE_STEPS["transition"])
    latents = make_latents()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = quantizer(latents)

    assert out.decoder_input.dtype == torch.float32
    assert out.quantized.dtype == torch.float32
    assert out.latents.dtype == torch.float32
    assert out.codebook_loss.dtype == torch.float32
    assert out.commitment_loss.dtype == torch.float32
    assert out.vq_loss.dtype == torch.float32


def test_autocast_bf16_ids_match_float32():
    quantizer = ProgressiveVectorQuantizer(512, CODEBOOK_DIM)
    with torch.no_grad():
        # 512 codes close together, so a bf16 distance computation would pick other codes.
        codes = 0.1 * torch.randn(512, CODEBOOK_DIM, generator=torch.Generator().manual_seed(2)) + 3.0
        quantizer.codebook.weight.copy_(codes)
    latents = 0.1 * make_latents((4096, CODEBOOK_DIM)) + 3.0

    reference = quantizer(latents)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = quantizer(latents)
        codes = quantizer.codebook.weight
        bf16_ids = (codes.pow(2).sum(1)[None, :] - 2.0 * latents @ codes.T).argmin(dim=1)

    assert not torch.equal(bf16_ids, reference.ids)  # the case is sensitive to bf16 rounding
    assert torch.equal(autocast.ids, reference.ids)
    assert torch.equal(autocast.decoder_input, reference.decoder_input)


def test_l2_norm_latents_and_codes_unit_norm():
    quantizer = make_quantizer(PHASE_STEPS["transition"], l2_norm=True)
    out = quantizer(3.0 * make_latents())

    ones = torch.ones(out.latents.shape[:-1])
    assert torch.allclose(out.latents.norm(dim=-1), ones, atol=1e-5)
    assert torch.allclose(out.quantized.norm(dim=-1), ones, atol=1e-5)
    assert torch.allclose(quantizer.codes().norm(dim=-1), torch.ones(CODEBOOK_SIZE), atol=1e-5)


def test_l2_norm_ids_use_cosine_similarity():
    quantizer = make_quantizer(PHASE_STEPS["discrete"], l2_norm=True)
    latents = make_latents()
    out = quantizer(latents)

    similarity = torch.nn.functional.normalize(latents.reshape(-1, CODEBOOK_DIM), dim=-1) @ quantizer.codes().T
    assert torch.equal(out.ids.reshape(-1), similarity.argmax(dim=1))


def test_l2_norm_warmup_feeds_normalized_latents():
    out = make_quantizer(PHASE_STEPS["warmup"], l2_norm=True)(make_latents())

    assert torch.allclose(out.decoder_input.norm(dim=-1), torch.ones(out.ids.shape), atol=1e-5)


@pytest.mark.parametrize("step", [0, PHASE_STEPS["transition"], 1000])
def test_eval_mode_fully_discrete(step):
    quantizer = make_quantizer(step).eval()
    out = quantizer(make_latents())

    assert out.curriculum.phase == "discrete"
    assert out.curriculum.alpha == 1.0
    assert torch.equal(out.decoder_input, out.quantized)


def test_step_curriculum_advances_buffer():
    quantizer = make_quantizer()
    quantizer.step_curriculum()
    quantizer.step_curriculum(3)

    assert int(quantizer.curriculum_step) == 4


def test_forward_does_not_advance_curriculum():
    quantizer = make_quantizer(PHASE_STEPS["transition"])
    for _ in range(3):
        quantizer(make_latents()).vq_loss.backward()

    assert int(quantizer.curriculum_step) == PHASE_STEPS["transition"]


@pytest.mark.parametrize("l2_norm", [False, True])
def test_zero_latents_no_nan(l2_norm):
    quantizer = make_quantizer(PHASE_STEPS["transition"], l2_norm=l2_norm)
    latents = torch.zeros(2, 4, 4, CODEBOOK_DIM, requires_grad=True)
    out = quantizer(latents)

    (out.decoder_input.sum() + out.vq_loss).backward()

    assert torch.isfinite(out.decoder_input).all()
    assert torch.isfinite(out.vq_loss)
    assert torch.isfinite(latents.grad).all()
    assert torch.isfinite(quantizer.codebook.weight.grad).all()


@pytest.mark.parametrize("l2_norm", [False, True])
def test_duplicate_latents_no_nan(l2_norm):
    quantizer = make_quantizer(PHASE_STEPS["discrete"], l2_norm=l2_norm)
    latents = make_latents((1, 1, 1, CODEBOOK_DIM)).expand(2, 4, 4, CODEBOOK_DIM).clone().requires_grad_(True)
    out = quantizer(latents)

    (out.decoder_input.sum() + out.vq_loss).backward()

    assert out.ids.unique().numel() == 1
    assert torch.isfinite(out.decoder_input).all()
    assert torch.isfinite(latents.grad).all()


@pytest.mark.parametrize("l2_norm", [False, True])
def test_init_codebook_zero_latents_no_nan(l2_norm):
    quantizer = make_quantizer(PHASE_STEPS["transition"], l2_norm=l2_norm)

    quantizer.init_codebook(torch.zeros(200, CODEBOOK_DIM), num_iters=5)
    out = quantizer(torch.zeros(1, 2, 2, CODEBOOK_DIM))

    assert torch.isfinite(quantizer.codebook.weight).all()
    assert torch.isfinite(out.decoder_input).all()


def test_init_codebook_duplicate_latents_no_nan():
    quantizer = make_quantizer(PHASE_STEPS["transition"])
    latents = torch.randn(4, CODEBOOK_DIM).repeat(50, 1)

    quantizer.init_codebook(latents, num_iters=5)

    assert torch.isfinite(quantizer.codebook.weight).all()
    assert bool(quantizer.kmeans_initialized)


def test_init_codebook_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\[N, 8\]"):
        make_quantizer().init_codebook(torch.randn(10, 4, CODEBOOK_DIM))


def test_forward_rejects_wrong_latent_dim():
    with pytest.raises(ValueError, match="last dimension 8"):
        make_quantizer()(torch.randn(2, 4, 4, 6))
