"""Tests of the LlamaGen generator model: sizes, positions, masking, caching, precision and serialization."""

import pytest
import torch
from transformers import AutoConfig, AutoModel
from transformers.cache_utils import DynamicCache

from generation import LlamaGenConfig, LlamaGenForClassConditionalGeneration
from generation.configuration_llamagen import swiglu_hidden_size
from generation.model_card import write_generator_model_card
from generation.modeling_llamagen import grid_rope_cos_sin

GRID = 4
CODEBOOK = 64
CLASSES = 5


def tiny_model(seed: int = 0, **overrides) -> LlamaGenForClassConditionalGeneration:
    """A small random generator in eval mode, with a non-zero output head so logits carry information."""
    torch.manual_seed(seed)
    fields = dict(codebook_size=CODEBOOK, grid_size=GRID, num_classes=CLASSES, hidden_size=64, num_hidden_layers=2,
                  num_attention_heads=4)
    fields.update(overrides)
    model = LlamaGenForClassConditionalGeneration(LlamaGenConfig(**fields))
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)
    return model.eval()


def random_codes(batch: int, seed: int = 1) -> torch.LongTensor:
    return torch.randint(0, CODEBOOK, (batch, GRID * GRID), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("preset", "expected"), [("GPT-B", 110.9e6), ("GPT-L", 342.9e6)])
def test_preset_parameter_count_matches_llamagen(preset, expected):
    config = LlamaGenConfig.from_preset(preset, codebook_size=16384, num_classes=1000)
    with torch.device("meta"):
        model = LlamaGenForClassConditionalGeneration(config)
    count = sum(parameter.numel() for parameter in model.parameters())
    assert abs(count - expected) / expected < 0.01


@pytest.mark.parametrize(("hidden_size", "expected"), [(768, 2048), (1024, 2816)])
def test_swiglu_hidden_size_matches_llamagen(hidden_size, expected):
    assert swiglu_hidden_size(hidden_size, 256) == expected


def test_preset_has_no_biases():
    config = LlamaGenConfig.from_preset("GPT-tiny", codebook_size=CODEBOOK, grid_size=GRID, num_classes=CLASSES)
    model = LlamaGenForClassConditionalGeneration(config)
    names = [name for name, _ in model.named_parameters()]
    assert not [name for name in names if name.endswith("bias")]


def test_output_head_is_untied_and_sized_to_codebook():
    model = tiny_model()
    assert model.lm_head.weight.shape == (CODEBOOK, 64)
    assert model.lm_head.weight.data_ptr() != model.token_embedding.weight.data_ptr()


def test_from_preset_rejects_unknown_name():
    with pytest.raises(ValueError, match="GPT-XXXL"):
        LlamaGenConfig.from_preset("GPT-XXXL")


def test_config_rejects_head_dim_not_multiple_of_four():
    with pytest.raises(ValueError, match="head_dim 6"):
        LlamaGenConfig(hidden_size=48, num_attention_heads=8)


def test_grid_rope_gives_rows_then_columns():
    head_dim, grid = 16, 3
    positions = torch.arange(1 + grid * grid)
    cos, sin = grid_rope_cos_sin(positions, grid, head_dim, theta=10000.0)
    angles = torch.atan2(sin[0], cos[0])  # [L, head_dim]; the first frequency is 1, so angles are small integers
    row, column = 2, 1
    position = 1 + row * grid + column
    assert torch.allclose(angles[position, 0], torch.tensor(float(row)))
    assert torch.allclose(angles[position, head_dim // 4], torch.tensor(float(column)))
    assert torch.equal(cos[0, 0], torch.ones(head_dim))  # the class token is not rotated


def test_untrained_model_predicts_uniform_logits():
    config = LlamaGenConfig(codebook_size=CODEBOOK, grid_size=GRID, num_classes=CLASSES, hidden_size=64,
                            num_hidden_layers=1, num_attention_heads=4)
    model = LlamaGenForClassConditionalGeneration(config).eval()
    codes = random_codes(2)
    output = model(input_ids=codes[:, :-1], class_labels=torch.tensor([0, 1]), labels=codes)
    assert torch.allclose(output.loss, torch.log(torch.tensor(float(CODEBOOK))))


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_forward_is_causal(attn_implementation):
    model = tiny_model()
    model.config._attn_implementation = attn_implementation
    codes = random_codes(2)
    changed = codes.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % CODEBOOK
    labels = torch.tensor([0, 3])
    with torch.no_grad():
        logits = model(input_ids=codes[:, :-1], class_labels=labels).logits
        changed_logits = model(input_ids=changed[:, :-1], class_labels=labels).logits
    # Position t attends to the class token and image tokens 0 .. t-1, so positions up to 9 miss the change.
    assert torch.equal(logits[:, :10], changed_logits[:, :10])
    assert not torch.allclose(logits[:, 10:], changed_logits[:, 10:])


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_cached_logits_match_full_forward(attn_implementation):
    model = tiny_model()
    model.config._attn_implementation = attn_implementation
    codes = random_codes(3)
    labels = torch.tensor([0, 2, 4])
    with torch.no_grad():
        full = model(input_ids=codes[:, :-1], class_labels=labels).logits
        cache = DynamicCache()
        steps = [model(class_labels=labels, cache=cache, use_cache=True).logits]
        steps.append(model(input_ids=codes[:, :5], cache=cache, use_cache=True).logits)  # several positions at once
        for position in range(5, GRID * GRID - 1):
            steps.append(model(input_ids=codes[:, position : position + 1], cache=cache, use_cache=True).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_forward_rejects_sequence_longer_than_grid():
    model = tiny_model()
    with pytest.raises(ValueError, match="exceeds"):
        model(input_ids=random_codes(1), class_labels=torch.tensor([0]))


def test_forward_rejects_class_labels_after_cache():
    model = tiny_model()
    cache = DynamicCache()
    model(class_labels=torch.tensor([0]), cache=cache, use_cache=True)
    with pytest.raises(ValueError, match="class_labels"):
        model(input_ids=random_codes(1)[:, :1], class_labels=torch.tensor([0]), cache=cache, use_cache=True)


def test_class_dropout_uses_null_class_in_training():
    model = tiny_model(class_dropout_prob=0.99, token_dropout_prob=0.0, residual_dropout_prob=0.0, ffn_dropout_prob=0.0)
    codes = random_codes(1)
    with torch.no_grad():
        null_logits = model(input_ids=codes[:, :-1], class_labels=torch.tensor([CLASSES])).logits
        model.train()
        torch.manual_seed(0)
        dropped_logits = model(input_ids=codes[:, :-1], class_labels=torch.tensor([1])).logits
    torch.testing.assert_close(dropped_logits, null_logits)


def test_logits_are_float32_under_bf16_autocast():
    model = tiny_model()
    codes = random_codes(2)
    with torch.no_grad():
        reference = model(input_ids=codes[:, :-1], class_labels=torch.tensor([0, 1])).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=codes[:, :-1], class_labels=torch.tensor([0, 1])).logits
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, reference, atol=0.1, rtol=0.05)


def test_save_load_roundtrip_is_exact(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    loaded = LlamaGenForClassConditionalGeneration.from_pretrained(tmp_path).eval()
    assert (tmp_path / "model.safetensors").is_file()
    original_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert original_state.keys() == loaded_state.keys()
    for name, tensor in original_state.items():
        assert torch.equal(tensor, loaded_state[name]), name
    loaded_fields = {key: value for key, value in loaded.config.to_dict().items() if key != "_name_or_path"}
    original_fields = {key: value for key, value in model.config.to_dict().items() if key != "_name_or_path"}
    assert loaded_fields == original_fields


def test_auto_classes_load_generator(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), LlamaGenConfig)
    assert isinstance(AutoModel.from_pretrained(tmp_path), LlamaGenForClassConditionalGeneration)


def test_model_card_names_tokenizer_and_size(tmp_path):
    model = tiny_model()
    path = write_generator_model_card(tmp_path, model, {"max_steps": 10}, tokenizer="outputs/tokenizer")
    card = path.read_text()
    assert path == tmp_path / "README.md"
    assert "outputs/tokenizer" in card
    assert "| `max_steps` | 10 |" in card
    assert f"{model.num_parameters() / 1e6:.1f}M parameters" in card


def test_from_pretrained_rejects_tokenizer_folder(tmp_path):
    from provq_hf import ProVQConfig, ProVQTokenizer

    ProVQTokenizer(ProVQConfig.from_preset("mnist-5k")).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type 'provq'"):
        LlamaGenForClassConditionalGeneration.from_pretrained(tmp_path)
