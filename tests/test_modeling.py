"""Tests of ProVQTokenizer: shapes, eval determinism, input checks, outputs and save/load round trips."""

import pytest
import torch
from transformers import AutoModel

from provq_hf import ProVQConfig, ProVQOutput, ProVQTokenizer


def build_model(preset="mnist-5k", seed=0, **overrides):
    torch.manual_seed(seed)
    fields = {"manifold_warmup_steps": 2, "transition_steps": 4, **overrides}
    return ProVQTokenizer(ProVQConfig.from_preset(preset, **fields))


def images(batch, channels=1, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, size, size, generator=generator) * 2 - 1


def with_latent_codebook(model, seed=100):
    """Set the codes to distinct latents of the model itself, so that encode spreads over many codes."""
    # 16 images give 1024 latents; the first `codebook_size` of them in random order become the codes.
    with torch.no_grad():
        latents = model.encode_latents(images(16, model.config.num_channels, seed=seed)).reshape(-1, 8)
        order = torch.randperm(latents.shape[0], generator=torch.Generator().manual_seed(seed))
        model.quantizer.codebook.weight.copy_(latents[order[: model.config.codebook_size]])
    return model


def with_kmeans_codebook(model, seed=100):
    """Run the K-Means codebook init on the model's own latents."""
    with torch.no_grad():
        latents = model.encode_latents(images(4, model.config.num_channels, seed=seed))
    model.init_codebook(latents.reshape(-1, model.config.codebook_dim))
    return model


@pytest.fixture(scope="module")
def mnist_model():
    return with_latent_codebook(build_model("mnist-5k")).eval()


@pytest.fixture(scope="module")
def color_model():
    return with_latent_codebook(build_model("small-color")).eval()


# Shapes.
def test_round_trip_shape_mnist(mnist_model):
    pixel_values = images(3, channels=1)

    ids = mnist_model.encode(pixel_values)
    reconstruction = mnist_model.decode(ids)

    assert ids.shape == (3, 8, 8)
    assert ids.dtype == torch.long
    assert reconstruction.shape == pixel_values.shape


def test_round_trip_shape_small_color(color_model):
    pixel_values = images(2, channels=3)

    reconstruction = color_model.decode(color_model.encode(pixel_values))

    assert reconstruction.shape == pixel_values.shape


def test_decode_output_in_pixel_range(mnist_model):
    reconstruction = mnist_model.decode(mnist_model.encode(images(2)))

    assert reconstruction.dtype == torch.float32
    assert reconstruction.min() >= -1.0
    assert reconstruction.max() <= 1.0


def test_decode_accepts_flat_ids(mnist_model):
    ids = mnist_model.encode(images(2))

    flat = mnist_model.decode(ids.reshape(2, 64))

    assert torch.equal(flat, mnist_model.decode(ids))


def test_encode_other_image_size(mnist_model):
    assert mnist_model.encode(images(1, size=48)).shape == (1, 12, 12)


# Eval-mode behaviour.
def test_encode_deterministic(mnist_model):
    pixel_values = images(4)

    assert torch.equal(mnist_model.encode(pixel_values), mnist_model.encode(pixel_values))


def test_decode_deterministic(mnist_model):
    ids = mnist_model.encode(images(2))

    assert torch.equal(mnist_model.decode(ids), mnist_model.decode(ids))


def test_encode_batch_size_independent(mnist_model):
    pixel_values = images(4)

    batched = mnist_model.encode(pixel_values)
    one_by_one = torch.cat([mnist_model.encode(pixel_values[i : i + 1]) for i in range(4)])

    assert batched.unique().numel() > 1  # the ids are not one constant code
    assert torch.equal(batched, one_by_one)


def test_decode_batch_size_independent(mnist_model):
    ids = mnist_model.encode(images(3))

    batched = mnist_model.decode(ids)
    one_by_one = torch.cat([mnist_model.decode(ids[i : i + 1]) for i in range(3)])

    assert torch.allclose(batched, one_by_one, atol=1e-5)


def test_encode_decode_change_no_buffer():
    model = with_kmeans_codebook(build_model(codebook_size=64)).train()
    model.step_curriculum(3)
    model.eval()
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}

    model.decode(model.encode(images(2)))

    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_eval_mode_discrete_during_warmup():
    model = build_model(manifold_warmup_steps=100).eval()

    output = model(images(2))

    assert model.curriculum_step == 0
    assert output.phase == "discrete"
    assert output.alpha == 1.0


def test_eval_forward_matches_decode_of_encode(mnist_model):
    pixel_values = images(2)

    output = mnist_model(pixel_values)

    assert torch.equal(output.ids, mnist_model.encode(pixel_values))
    # The decoder receives the same codes, but its convolutions may pick other kernels for other memory layouts.
    assert torch.allclose(output.reconstruction.clamp(-1, 1), mnist_model.decode(output.ids), atol=1e-4)


# Input checks.
def test_encode_rejects_wrong_channel_count(mnist_model):
    with pytest.raises(ValueError, match="3 channels"):
        mnist_model.encode(images(1, channels=3))


def test_encode_rejects_size_not_multiple_of_factor(mnist_model):
    with pytest.raises(ValueError, match="30x30"):
        mnist_model.encode(images(1, size=30))


def test_encode_rejects_non_multiple_width(mnist_model):
    with pytest.raises(ValueError, match="32x30"):
        mnist_model.encode(torch.zeros(1, 1, 32, 30))


def test_encode_rejects_3d_pixel_values(mnist_model):
    with pytest.raises(ValueError, match=r"\(1, 32, 32\)"):
        mnist_model.encode(torch.zeros(1, 32, 32))


def test_encode_rejects_integer_pixel_values(mnist_model):
    with pytest.raises(ValueError, match="uint8"):
        mnist_model.encode(torch.zeros(1, 1, 32, 32, dtype=torch.uint8))


def test_decode_rejects_negative_id(mnist_model):
    ids = torch.zeros(1, 8, 8, dtype=torch.long)
    ids[0, 3, 3] = -1

    with pytest.raises(ValueError, match="-1"):
        mnist_model.decode(ids)


def test_decode_rejects_id_above_codebook(mnist_model):
    ids = torch.zeros(1, 8, 8, dtype=torch.long)
    ids[0, 0, 5] = 512

    with pytest.raises(ValueError, match="512"):
        mnist_model.decode(ids)


def test_decode_rejects_flat_length_mismatch(mnist_model):
    with pytest.raises(ValueError, match="63"):
        mnist_model.decode(torch.zeros(2, 63, dtype=torch.long))


def test_decode_rejects_4d_ids(mnist_model):
    with pytest.raises(ValueError, match=r"\(1, 1, 8, 8\)"):
        mnist_model.decode(torch.zeros(1, 1, 8, 8, dtype=torch.long))


def test_decode_rejects_float_ids(mnist_model):
    with pytest.raises(ValueError, match="float32"):
        mnist_model.decode(torch.zeros(1, 8, 8))


def test_decode_rejects_bool_ids(mnist_model):
    with pytest.raises(ValueError, match="bool"):
        mnist_model.decode(torch.zeros(1, 8, 8, dtype=torch.bool))


# Forward output.
@pytest.mark.parametrize("step, phase", [(0, "warmup"), (4, "transition"), (6, "discrete")])
def test_forward_reports_curriculum(step, phase):
    model = build_model().train()
    model.step_curriculum(step)

    output = model(images(2))

    assert isinstance(output, ProVQOutput)
    assert output.phase == phase
    assert output.curriculum_step == step
    assert output.alpha == model.quantizer.curriculum().alpha
    assert output.omega == model.quantizer.curriculum().omega


def test_forward_loss_is_sum_of_terms():
    model = build_model().train()
    model.step_curriculum(4)

    output = model(images(2))

    beta = model.config.commitment_beta
    expected_vq = output.omega * (output.codebook_loss + beta * output.commitment_loss)
    assert output.alpha == pytest.approx(0.5)
    assert torch.allclose(output.vq_loss, expected_vq)
    assert torch.allclose(output.loss, output.reconstruction_loss + output.vq_loss)
    assert output.codebook_loss > 0
    assert output.commitment_loss > 0


def test_forward_reconstruction_loss_mse():
    model = build_model().train()
    pixel_values = images(2)

    output = model(pixel_values)

    expected = torch.nn.functional.mse_loss(output.reconstruction, pixel_values)
    assert torch.allclose(output.reconstruction_loss, expected)


def test_forward_reconstruction_loss_l1():
    model = build_model(reconstruction_loss="l1").train()
    pixel_values = images(2)

    output = model(pixel_values)

    expected = torch.nn.functional.l1_loss(output.reconstruction, pixel_values)
    assert torch.allclose(output.reconstruction_loss, expected)


def test_forward_warmup_loss_is_reconstruction_only():
    model = build_model().train()

    output = model(images(2))

    assert output.vq_loss.item() == 0.0
    assert torch.equal(output.loss, output.reconstruction_loss)


def test_forward_return_dict_false_gives_tuple():
    model = build_model().train()

    output = model(images(1), return_dict=False)

    assert isinstance(output, tuple)
    assert torch.is_tensor(output[0])


def test_forward_backward_reaches_encoder_in_warmup():
    model = build_model().train()

    model(images(2)).loss.backward()

    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quant_conv.weight.grad.abs().sum() > 0


def test_gradient_accumulation_keeps_curriculum_step():
    model = build_model().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    for _ in range(2):  # two optimizer steps of two micro-batches each
        for micro_batch in range(2):
            (model(images(1, seed=micro_batch)).loss / 2).backward()
            assert model.curriculum_step == model.quantizer.curriculum().step
        optimizer.step()
        optimizer.zero_grad()
        model.step_curriculum()

    assert model.curriculum_step == 2
    assert model.quantizer.curriculum().phase == "transition"


# Save and load.
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(model, directory): a model whose curriculum step, K-Means flag and codebook differ from a fresh
    one, saved with save_pretrained."""
    model = with_kmeans_codebook(build_model(seed=1, codebook_size=64))
    model.step_curriculum(5)
    directory = tmp_path_factory.mktemp("saved_tokenizer")
    model.save_pretrained(directory)
    return model, directory


def test_save_pretrained_files(saved):
    _, directory = saved

    assert (directory / "config.json").is_file()
    assert (directory / "model.safetensors").is_file()


@pytest.mark.parametrize("loader", [ProVQTokenizer.from_pretrained, AutoModel.from_pretrained])
def test_round_trip_bit_exact(saved, loader):
    model, directory = saved

    loaded = loader(directory)

    assert isinstance(loaded, ProVQTokenizer)
    original = model.state_dict()
    restored = loaded.state_dict()
    assert sorted(restored) == sorted(original)
    for name, tensor in original.items():
        assert restored[name].dtype == tensor.dtype, name
        assert torch.equal(restored[name], tensor), name


def test_round_trip_restores_curriculum(saved):
    _, directory = saved

    loaded = ProVQTokenizer.from_pretrained(directory)

    assert loaded.curriculum_step == 5
    assert loaded.codebook_initialized is True
    assert loaded.needs_codebook_init() is False
    assert loaded.train().quantizer.curriculum().phase == "transition"


def test_round_trip_same_ids(saved):
    model, directory = saved
    pixel_values = images(2)

    loaded = ProVQTokenizer.from_pretrained(directory)

    assert torch.equal(loaded.encode(pixel_values), model.eval().encode(pixel_values))


def test_load_bf16_keeps_codebook_float32(saved):
    _, directory = saved

    loaded = ProVQTokenizer.from_pretrained(directory, dtype=torch.bfloat16)

    assert loaded.quantizer.codebook.weight.dtype == torch.float32
    assert loaded.encoder.conv_in.weight.dtype == torch.bfloat16
    assert loaded.quantizer.curriculum_step.dtype == torch.long
    assert loaded.quantizer.kmeans_initialized.dtype == torch.bool


def test_load_bf16_codebook_bit_exact(saved):
    model, directory = saved

    loaded = ProVQTokenizer.from_pretrained(directory, dtype=torch.bfloat16)

    assert torch.equal(loaded.quantizer.codebook.weight, model.quantizer.codebook.weight)
    assert loaded.curriculum_step == 5
    assert loaded.codebook_initialized is True


def test_load_bf16_encode_decode_runs(saved):
    _, directory = saved
    loaded = ProVQTokenizer.from_pretrained(directory, dtype=torch.bfloat16)

    ids = loaded.encode(images(1))
    reconstruction = loaded.decode(ids)

    assert ids.shape == (1, 8, 8)
    assert reconstruction.dtype == torch.float32
    assert torch.isfinite(reconstruction).all()


def test_from_pretrained_is_eval_mode(saved):
    _, directory = saved

    loaded = ProVQTokenizer.from_pretrained(directory)

    assert not loaded.training
    assert loaded.quantizer.curriculum().phase == "discrete"


@pytest.mark.parametrize("bad_value", [float("nan"), 255.0, -3.0])
def test_encode_rejects_pixels_outside_unit_range(bad_value):
    model = ProVQTokenizer(ProVQConfig.from_preset("mnist-5k")).eval()
    pixel_values = torch.zeros(1, 1, 32, 32)
    pixel_values[0, 0, 0, 0] = bad_value
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        model.encode(pixel_values)


def test_from_pretrained_rejects_other_model_type(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llamagen", "grid_size": 8}')
    with pytest.raises(ValueError, match="llamagen"):
        ProVQConfig.from_pretrained(tmp_path)
