"""Tests of ProVQConfig: presets, method names, derived values, validation and load-time overrides."""

import json

import pytest
import torch

from provq_hf import ProVQConfig, ProVQTokenizer

# Effective (T_w, T_s) of each method for manifold_warmup_steps=100 and transition_steps=40.
EFFECTIVE_STEPS = {
    "vanilla": (0, 0),
    "warmup_hard": (100, 0),
    "soft_only": (0, 40),
    "provq_linear": (100, 40),
    "provq_cosine": (100, 40),
}


def test_preset_mnist_5k():
    config = ProVQConfig.from_preset("mnist-5k")

    assert config.image_size == 32
    assert config.num_channels == 1
    assert config.downsample_factor == 4
    assert config.grid_size == 8
    assert config.num_tokens == 64
    assert config.codebook_size == 512
    assert config.codebook_dim == 8


def test_preset_llamagen_vq16():
    config = ProVQConfig.from_preset("llamagen-vq16")

    assert config.codebook_size == 16384
    assert config.codebook_dim == 8
    assert config.codebook_l2_norm is True
    assert config.ch_mult == [1, 1, 2, 2, 4]
    assert config.downsample_factor == 16
    assert config.image_size == 256
    assert config.grid_size == 16


def test_preset_small_color():
    config = ProVQConfig.from_preset("small-color")

    assert config.num_channels == 3
    assert config.image_size == 32
    assert config.grid_size == 8


def test_preset_alias_photo_patches():
    assert ProVQConfig.from_preset("photo-patches").to_dict() == ProVQConfig.from_preset("small-color").to_dict()


def test_preset_overrides_applied():
    config = ProVQConfig.from_preset("mnist-5k", codebook_size=64, method="vanilla")

    assert config.codebook_size == 64
    assert config.method == "vanilla"
    assert config.num_channels == 1


def test_preset_unknown_name_rejected():
    with pytest.raises(ValueError, match="no-such-preset"):
        ProVQConfig.from_preset("no-such-preset")


def test_preset_does_not_share_lists():
    first = ProVQConfig.from_preset("mnist-5k")
    first.ch_mult.append(8)

    assert ProVQConfig.from_preset("mnist-5k").ch_mult == [1, 2, 2]


def test_method_alias_provq():
    assert ProVQConfig(method="provq").method == "provq_cosine"


@pytest.mark.parametrize("method", sorted(EFFECTIVE_STEPS))
def test_effective_steps_per_method(method):
    config = ProVQConfig(method=method, manifold_warmup_steps=100, transition_steps=40)

    warmup, transition = EFFECTIVE_STEPS[method]
    assert config.effective_manifold_warmup_steps == warmup
    assert config.effective_transition_steps == transition


@pytest.mark.parametrize("method", sorted(EFFECTIVE_STEPS))
def test_kmeans_init_per_method(method):
    assert ProVQConfig(method=method).uses_kmeans_init is (method != "vanilla")


def test_schedule_per_method():
    assert ProVQConfig(method="provq_linear").schedule == "linear"
    assert ProVQConfig(method="provq_cosine").schedule == "cosine"
    assert ProVQConfig(method="soft_only").schedule == "cosine"


@pytest.mark.parametrize(
    "fields, expected_words",
    [
        ({"method": "provq_sine"}, ["provq_sine"]),
        ({"omega": "adaptive"}, ["adaptive"]),
        ({"reconstruction_loss": "huber"}, ["huber"]),
        ({"image_size": 30}, ["image_size", "30"]),
        ({"image_size": 0}, ["image_size", "got 0"]),
        ({"codebook_size": -4}, ["codebook_size", "-4"]),
        ({"transition_steps": -1}, ["transition_steps", "-1"]),
        ({"ch_mult": []}, ["ch_mult", "[]"]),
        ({"base_channels": 48, "norm_num_groups": 32}, ["48", "norm_num_groups=32"]),
        ({"z_channels": 40, "norm_num_groups": 32}, ["40", "norm_num_groups=32"]),
        ({"commitment_beta": -0.5}, ["commitment_beta", "-0.5"]),
        ({"kmeans_num_samples": 0}, ["kmeans_num_samples", "got 0"]),
    ],
)
def test_invalid_field_rejected(fields, expected_words):
    with pytest.raises(ValueError) as error:
        ProVQConfig(**fields)

    for word in expected_words:
        assert word in str(error.value)


def test_invalid_image_size_message_names_factor():
    with pytest.raises(ValueError, match="downsampling factor 16"):
        ProVQConfig.from_preset("llamagen-vq16", image_size=200)


def test_json_round_trip(tmp_path):
    config = ProVQConfig.from_preset("llamagen-vq16", method="provq_linear", omega="constant")
    config.save_pretrained(tmp_path)

    loaded = ProVQConfig.from_pretrained(tmp_path)

    assert loaded.to_dict() == config.to_dict()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "provq"


def test_from_pretrained_override_updates_grid(tmp_path):
    ProVQConfig.from_preset("mnist-5k").save_pretrained(tmp_path)

    config = ProVQConfig.from_pretrained(tmp_path, image_size=64)

    assert config.image_size == 64
    assert config.grid_size == 16
    assert config.num_tokens == 256


def test_from_pretrained_override_method_switches_curriculum(tmp_path):
    ProVQConfig.from_preset("mnist-5k", manifold_warmup_steps=10).save_pretrained(tmp_path)

    config = ProVQConfig.from_pretrained(tmp_path, method="vanilla")

    assert config.effective_manifold_warmup_steps == 0
    assert config.uses_kmeans_init is False


def test_config_from_pretrained_rejects_bad_image_size(tmp_path):
    ProVQConfig.from_preset("mnist-5k").save_pretrained(tmp_path)

    with pytest.raises(ValueError, match="30"):
        ProVQConfig.from_pretrained(tmp_path, image_size=30)


def test_config_from_pretrained_maps_method_alias(tmp_path):
    ProVQConfig.from_preset("mnist-5k").save_pretrained(tmp_path)

    config = ProVQConfig.from_pretrained(tmp_path, method="provq")

    assert config.method == "provq_cosine"


def test_model_from_pretrained_maps_method_alias(tmp_path):
    ProVQTokenizer(ProVQConfig.from_preset("mnist-5k")).save_pretrained(tmp_path)

    model = ProVQTokenizer.from_pretrained(tmp_path, method="provq")

    assert model.config.method == "provq_cosine"


def test_model_from_pretrained_rejects_bad_image_size(tmp_path):
    ProVQTokenizer(ProVQConfig.from_preset("mnist-5k")).save_pretrained(tmp_path)

    with pytest.raises(ValueError, match="image_size 30"):
        ProVQTokenizer.from_pretrained(tmp_path, image_size=30)


def test_model_from_pretrained_override_image_size(tmp_path):
    ProVQTokenizer(ProVQConfig.from_preset("mnist-5k")).save_pretrained(tmp_path)
    model = ProVQTokenizer.from_pretrained(tmp_path, image_size=64)

    ids = model.encode(torch.zeros(1, 1, 64, 64))

    assert model.config.grid_size == 16
    assert ids.shape == (1, 16, 16)


def test_model_from_pretrained_rejects_codebook_size_mismatch(tmp_path):
    # transformers 5 reports the shape mismatch and raises unless ignore_mismatched_sizes=True.
    ProVQTokenizer(ProVQConfig.from_preset("mnist-5k")).save_pretrained(tmp_path)

    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        ProVQTokenizer.from_pretrained(tmp_path, codebook_size=256)
