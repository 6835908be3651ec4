"""Tests of the sampling loop: guidance, temperature, top-k/top-p, seeding, KV cache and input checks."""

import math

import pytest
import torch

from generation import LlamaGenConfig, LlamaGenForClassConditionalGeneration, generate
from generation.sampling import filter_top_k, filter_top_p, guided_logits, sample_next_token

GRID = 3
CODEBOOK = 64
CLASSES = 5


@pytest.fixture(scope="module")
def model() -> LlamaGenForClassConditionalGeneration:
    torch.manual_seed(0)
    config = LlamaGenConfig(codebook_size=CODEBOOK, grid_size=GRID, num_classes=CLASSES, hidden_size=64,
                            num_hidden_layers=2, num_attention_heads=4)
    generator_model = LlamaGenForClassConditionalGeneration(config)
    # A wide output head spreads the logits, so different seeds and settings give different grids.
    torch.nn.init.normal_(generator_model.lm_head.weight, std=0.5)
    return generator_model.eval()


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def greedy_reference(model, labels: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Greedy decoding written independently: full forward passes, no cache, guidance on the last logits."""
    tokens = torch.empty(len(labels), 0, dtype=torch.long)
    null = torch.full_like(labels, CLASSES)
    with torch.no_grad():
        for _ in range(GRID * GRID):
            inputs = tokens if tokens.shape[1] else None
            cond = model(input_ids=inputs, class_labels=labels).logits[:, -1]
            uncond = model(input_ids=inputs, class_labels=null).logits[:, -1]
            logits = uncond + cfg_scale * (cond - uncond)
            tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    return tokens.view(-1, GRID, GRID)


def test_guided_logits_scale_one_is_conditional():
    cond, uncond = torch.randn(3, 10), torch.randn(3, 10)
    torch.testing.assert_close(guided_logits(cond, uncond, 1.0), cond)


def test_guided_logits_scale_zero_is_unconditional():
    cond, uncond = torch.randn(3, 10), torch.randn(3, 10)
    torch.testing.assert_close(guided_logits(cond, uncond, 0.0), uncond)


def test_guided_logits_scale_extrapolates():
    cond, uncond = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    torch.testing.assert_close(guided_logits(cond, uncond, 3.0), torch.tensor([[4.0, -2.0]]))


def test_filter_top_k_keeps_k_largest():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0]])
    kept = torch.isfinite(filter_top_k(logits, 2))
    assert kept.tolist() == [[False, True, True, False]]


@pytest.mark.parametrize(("top_p", "expected"), [(0.5, 1), (0.7, 2), (0.8, 2), (0.81, 3), (1.0, 4)])
def test_filter_top_p_keeps_nucleus(top_p, expected):
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = torch.isfinite(filter_top_p(logits, top_p))
    assert kept.sum().item() == expected
    assert kept[0, :expected].all()


def test_sample_next_token_temperature_zero_is_argmax():
    logits = torch.randn(8, CODEBOOK)
    assert torch.equal(sample_next_token(logits, temperature=0.0), logits.argmax(-1))


def test_generate_returns_ids_in_codebook_range(model):
    ids = generate(model, [0, 1, 2, 3, 4, 0], cfg_scale=2.0, top_k=20, top_p=0.9, generator=seeded())
    assert ids.shape == (6, GRID, GRID)
    assert ids.dtype == torch.long
    assert ids.min().item() >= 0
    assert ids.max().item() < CODEBOOK


@pytest.mark.parametrize("cfg_scale", [0.0, 1.0, 3.0])
def test_generate_with_and_without_cache_agree(model, cfg_scale):
    cached = generate(model, [0, 2, 4], cfg_scale=cfg_scale, top_k=30, generator=seeded(), use_cache=True)
    uncached = generate(model, [0, 2, 4], cfg_scale=cfg_scale, top_k=30, generator=seeded(), use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_generate_temperature_zero_matches_greedy_reference(model, cfg_scale):
    labels = torch.tensor([1, 3])
    ids = generate(model, labels, cfg_scale=cfg_scale, temperature=0.0)
    assert torch.equal(ids, greedy_reference(model, labels, cfg_scale))


def test_generate_top_k_one_is_greedy(model):
    greedy = generate(model, [0, 4], cfg_scale=2.0, temperature=0.0)
    top_one = generate(model, [0, 4], cfg_scale=2.0, temperature=1.0, top_k=1, generator=seeded())
    assert torch.equal(top_one, greedy)


def test_generate_same_seed_same_ids(model):
    first = generate(model, [0, 1, 2], cfg_scale=1.5, generator=seeded(7))
    second = generate(model, [0, 1, 2], cfg_scale=1.5, generator=seeded(7))
    assert torch.equal(first, second)


def test_generate_different_seed_different_ids(model):
    first = generate(model, [0, 1, 2], cfg_scale=1.5, generator=seeded(7))
    second = generate(model, [0, 1, 2], cfg_scale=1.5, generator=seeded(8))
    assert not torch.equal(first, second)


def test_generate_guidance_scale_is_cfg_scale_alias(model):
    by_cfg = generate(model, [2, 3], cfg_scale=2.0, generator=seeded())
    by_guidance = generate(model, [2, 3], guidance_scale=2.0, generator=seeded())
    assert torch.equal(by_cfg, by_guidance)


def test_model_generate_method_matches_function(model):
    by_method = model.generate(torch.tensor([1, 2]), cfg_scale=2.0, generator=seeded())
    by_function = generate(model, [1, 2], cfg_scale=2.0, generator=seeded())
    assert torch.equal(by_method, by_function)


def test_generate_restores_training_mode(model):
    model.train()
    try:
        generate(model, [0], temperature=0.0)
        assert model.training
    finally:
        model.eval()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"class_labels": [0, CLASSES]}, f"class label {CLASSES}"),
        ({"class_labels": [-1]}, "class label -1"),
        ({"top_p": 0.0}, "top_p .* got 0.0"),
        ({"top_p": 1.5}, "got 1.5"),
        ({"temperature": -0.5}, "temperature .* got -0.5"),
        ({"cfg_scale": -1.0}, "cfg_scale .* got -1.0"),
        ({"cfg_scale": math.inf}, "cfg_scale .* got inf"),
        ({"top_k": -3}, "top_k .* got -3"),
        ({"cfg_scale": 2.0, "guidance_scale": 3.0}, "cfg_scale=2.0 and guidance_scale=3.0"),
    ],
)
def test_generate_rejects_bad_input(model, kwargs, message):
    arguments = {"class_labels": [0, 1], **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(model, **arguments)


def test_generate_accepts_equal_cfg_and_guidance_scale(model):
    ids = generate(model, [0], cfg_scale=2.0, guidance_scale=2.0, temperature=0.0)
    assert ids.shape == (1, GRID, GRID)
