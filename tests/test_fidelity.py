"""The mnist-5k domain classifier and the torch-fidelity wrapper, on the real mnist-5k splits.

The classifier is trained once per test session, into a temporary PROVQ_CACHE (20 to 45 s on 2 shared CPU cores).
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from provq_hf.domain_classifier import (
    METADATA_NAME,
    WEIGHTS_NAME,
    DomainClassifier,
    classifier_accuracy,
    feature_extractor_dir,
    load_domain_classifier,
    load_or_train_domain_classifier,
)
from provq_hf.fidelity import (
    INCEPTION_V3_COMPAT_SHA256,
    compute_fidelity_metrics,
    images_to_uint8_dataset,
    inception_feature_extractor,
    load_or_train_feature_extractor,
    register_domain_classifier,
)

MIN_TEST_ACCURACY = 0.97


@pytest.fixture(scope="session")
def mnist_splits(provq_cache):
    from provq_hf.data import load_image_tensors

    train_images, train_labels = load_image_tensors("mnist-5k", "train")
    test_images, test_labels = load_image_tensors("mnist-5k", "test")
    return train_images, train_labels, test_images, test_labels


@pytest.fixture(scope="session")
def mnist_classifier(mnist_splits) -> DomainClassifier:
    """The mnist-5k domain classifier, trained into the session's PROVQ_CACHE."""
    train_images, train_labels, test_images, test_labels = mnist_splits
    return load_or_train_domain_classifier(
        "mnist-5k",
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
    )


@pytest.fixture(scope="session")
def mnist_extractor(mnist_classifier):
    return register_domain_classifier(mnist_classifier)


def test_feature_extractor_dir_follows_provq_cache(provq_cache):
    assert feature_extractor_dir("mnist-5k") == provq_cache / "feature_extractors" / "mnist-5k"


def test_feature_extractor_dir_separates_paths_and_hub_ids(tmp_path):
    folder_a = feature_extractor_dir("user/images", cache_dir=tmp_path)
    folder_b = feature_extractor_dir("user_images", cache_dir=tmp_path)

    assert folder_a != folder_b
    assert folder_a.parent == tmp_path / "feature_extractors"


def test_domain_classifier_mnist_test_accuracy(mnist_classifier, mnist_splits, provq_cache):
    _, _, test_images, test_labels = mnist_splits
    metadata = json.loads((feature_extractor_dir("mnist-5k") / METADATA_NAME).read_text())

    recomputed = classifier_accuracy(mnist_classifier, test_images, test_labels)

    assert metadata["test_accuracy"] >= MIN_TEST_ACCURACY
    assert metadata["num_test"] == 1000
    assert recomputed == pytest.approx(metadata["test_accuracy"])


def test_domain_classifier_json_describes_model(mnist_classifier, provq_cache):
    folder = feature_extractor_dir("mnist-5k")
    metadata = json.loads((folder / METADATA_NAME).read_text())

    assert metadata["dataset"] == "mnist-5k"
    assert (metadata["num_channels"], metadata["image_size"], metadata["num_classes"]) == (1, 32, 10)
    assert metadata["training"]["num_train"] == 4000
    assert metadata["weights_sha256"] == hashlib.sha256((folder / WEIGHTS_NAME).read_bytes()).hexdigest()
    assert metadata["weights_sha256"] == mnist_classifier.weights_sha256


def test_domain_classifier_save_leaves_no_temporary_folders(mnist_classifier, provq_cache):
    siblings = [path.name for path in feature_extractor_dir("mnist-5k").parent.iterdir()]

    assert siblings == ["mnist-5k"]


def test_load_or_train_reuses_cached_classifier(mnist_classifier, provq_cache):
    weights_path = feature_extractor_dir("mnist-5k") / WEIGHTS_NAME
    modified_before = weights_path.stat().st_mtime_ns

    # No training tensors: a retrain would have to load the data set and would rewrite the file.
    reloaded = load_or_train_domain_classifier("mnist-5k")

    assert reloaded.weights_sha256 == mnist_classifier.weights_sha256
    assert weights_path.stat().st_mtime_ns == modified_before
    for name, tensor in mnist_classifier.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name


def test_load_domain_classifier_rejects_tampered_weights(mnist_classifier, provq_cache, tmp_path):
    copy = tmp_path / "tampered"
    shutil.copytree(feature_extractor_dir("mnist-5k"), copy)
    weights = bytearray((copy / WEIGHTS_NAME).read_bytes())
    weights[-1] ^= 0xFF
    (copy / WEIGHTS_NAME).write_bytes(bytes(weights))

    with pytest.raises(ValueError, match="SHA-256"):
        load_domain_classifier(copy)


def test_load_domain_classifier_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match=METADATA_NAME):
        load_domain_classifier(tmp_path / "absent")


def test_register_domain_classifier_twice_reuses_name(mnist_classifier):
    first = register_domain_classifier(mnist_classifier)
    second = load_or_train_feature_extractor("mnist-5k")

    assert second.name == first.name
    assert first.name in FEATURE_EXTRACTORS_REGISTRY
    assert first.weights_sha256 == mnist_classifier.weights_sha256
    assert first.name.endswith(first.weights_sha256[:16])


def test_extractor_gray_and_rgb_features_match(mnist_extractor, mnist_splits):
    extractor_class = FEATURE_EXTRACTORS_REGISTRY[mnist_extractor.name]
    extractor = extractor_class(mnist_extractor.name, ["features", "logits"]).eval()
    gray = images_to_uint8_dataset(mnist_splits[2][:16]).images

    with torch.no_grad():
        gray_features, gray_logits = extractor(gray)
        rgb_features, rgb_logits = extractor(gray.expand(-1, 3, -1, -1))

    assert gray_features.shape == (16, 128)
    assert torch.allclose(rgb_features, gray_features, atol=1e-4)
    assert torch.equal(rgb_logits.argmax(dim=1), gray_logits.argmax(dim=1))


def test_registered_extractor_rejects_wrong_image_size(mnist_extractor):
    extractor_class = FEATURE_EXTRACTORS_REGISTRY[mnist_extractor.name]
    extractor = extractor_class(mnist_extractor.name, ["features"])

    with pytest.raises(ValueError, match="32x32"):
        extractor(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))


def test_images_to_uint8_dataset_round_trips_pixels():
    pixels = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    images = pixels.float() / 127.5 - 1.0

    dataset = images_to_uint8_dataset(images)

    assert len(dataset) == 5
    assert dataset[2].shape == (3, 8, 8)
    assert torch.equal(dataset.images, pixels)


def test_images_to_uint8_dataset_repeats_gray_channels():
    dataset = images_to_uint8_dataset(torch.zeros(2, 1, 8, 8), num_channels=3)

    assert dataset[0].shape == (3, 8, 8)
    assert int(dataset[0].min()) == 128


def test_fidelity_real_test_split_against_train_split(mnist_extractor, mnist_splits):
    train_images, _, test_images, _ = mnist_splits
    noise = torch.randint(0, 256, (1000, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    real_scores = compute_fidelity_metrics(
        generated=test_images, real=train_images, feature_extractor=mnist_extractor, kid_subsets=20, device="cpu"
    )
    noise_scores = compute_fidelity_metrics(
        generated=noise, real=train_images, feature_extractor=mnist_extractor, metrics=("fid",), device="cpu"
    )

    assert real_scores["precision"] >= 0.7
    assert real_scores["recall"] >= 0.7
    assert real_scores["fid"] < noise_scores["fid"] / 10
    assert real_scores["inception_score"] > 8.0  # 10 balanced, confidently classified classes
    assert abs(real_scores["kid"]) < 0.05
    assert (real_scores["num_generated"], real_scores["num_real"]) == (1000, 4000)
    assert real_scores["feature_extractor"]["weights_sha256"] == mnist_extractor.weights_sha256
    assert real_scores["feature_extractor"]["test_accuracy"] >= MIN_TEST_ACCURACY


def test_fidelity_mode_collapse_has_high_precision_low_recall(mnist_extractor, mnist_splits):
    train_images = mnist_splits[0]
    collapsed = train_images[123:124].repeat(1000, 1, 1, 1)

    scores = compute_fidelity_metrics(
        generated=collapsed, real=train_images, feature_extractor=mnist_extractor, metrics=("prc",), device="cpu"
    )

    assert scores["precision"] > 0.9
    assert scores["recall"] < 0.05


def test_fidelity_kid_subset_scales_to_small_sets(mnist_extractor, mnist_splits):
    train_images, _, test_images, _ = mnist_splits

    scores = compute_fidelity_metrics(
        generated=test_images[:150],
        real=train_images[:1000],
        feature_extractor=mnist_extractor,
        metrics=("kid",),
        device="cpu",
    )

    assert scores["settings"]["kid_subset_size"] == 150
    assert scores["kid_std"] >= 0.0
    assert "fid" not in scores


def test_fidelity_inception_score_without_real_set(mnist_extractor, mnist_splits):
    scores = compute_fidelity_metrics(
        generated=mnist_splits[2][:200], real=None, feature_extractor=mnist_extractor, metrics=("isc",), device="cpu"
    )

    assert 1.0 <= scores["inception_score"] <= 10.0
    assert scores["num_real"] is None


def test_fidelity_accepts_classifier_directly(mnist_classifier, mnist_extractor, mnist_splits):
    train_images, _, test_images, _ = mnist_splits

    scores = compute_fidelity_metrics(
        generated=test_images[:100],
        real=train_images[:400],
        feature_extractor=mnist_classifier,
        metrics=("fid",),
        device="cpu",
    )

    assert scores["feature_extractor"]["name"] == mnist_extractor.name


def test_compute_fidelity_metrics_rejects_positional_inputs(mnist_extractor, mnist_splits):
    with pytest.raises(TypeError):
        compute_fidelity_metrics(mnist_splits[2], mnist_splits[0], mnist_extractor)


def test_compute_fidelity_metrics_rejects_unknown_metric(mnist_extractor, mnist_splits):
    with pytest.raises(ValueError, match="ppl"):
        compute_fidelity_metrics(
            generated=mnist_splits[2], real=mnist_splits[0], feature_extractor=mnist_extractor, metrics=("ppl",)
        )


def test_compute_fidelity_metrics_requires_real_for_fid(mnist_extractor, mnist_splits):
    with pytest.raises(ValueError, match="real="):
        compute_fidelity_metrics(generated=mnist_splits[2], real=None, feature_extractor=mnist_extractor)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised on machines without CUDA")
def test_compute_fidelity_metrics_rejects_cuda_without_gpu(mnist_extractor, mnist_splits):
    with pytest.raises(ValueError, match="CUDA is not available"):
        compute_fidelity_metrics(
            generated=mnist_splits[2], real=mnist_splits[0], feature_extractor=mnist_extractor, device="cuda"
        )


def test_inception_feature_extractor_rejects_unofficial_weights(tmp_path):
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"not the official file")

    with pytest.raises(ValueError, match=INCEPTION_V3_COMPAT_SHA256):
        inception_feature_extractor(weights)


def test_inception_feature_extractor_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        inception_feature_extractor(Path(tmp_path) / "absent.pth")
