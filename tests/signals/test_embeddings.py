"""Field embeddings and field similarity (DataProphet's QSim / ASim / ISim)."""

import itertools
import os

import numpy as np
import pytest

from mixwise.signals.embeddings import (
    EmbeddingConfig,
    FieldEmbedder,
    bundled_text_encoder_path,
    field_similarity,
    l2_normalize,
    mean_unit_vector,
)
from mixwise.toy import make_source

TEXTS = [
    "How many shapes are in the image?",
    "red",
    "What colour is the shape?",
    "Is the circle left of, right of, above or below the square?",
    "7",
]


def test_similarity_is_the_dot_product_of_mean_unit_vectors():
    # hand-computed: s = {(1,0), (0,1)}, t = {(1,0)} -> mean unit vectors (.5,.5) and (1,0) -> Sim = 0.5
    s = np.array([[1.0, 0.0], [0.0, 3.0]])  # lengths do not matter: vectors are normalized first
    t = np.array([[2.0, 0.0]])
    assert field_similarity(s, t) == pytest.approx(0.5)
    # = the average cosine over all pairs ...
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.normal(size=(4, 5))
    pairs = [float(l2_normalize(a) @ l2_normalize(b)) for a, b in itertools.product(x, y)]
    assert field_similarity(x, y) == pytest.approx(np.mean(pairs))
    # ... and differs from the cosine of the mean unit vectors (which renormalizes them: here 1/sqrt(2) ≈ 0.707)
    ms, mt = mean_unit_vector(s), mean_unit_vector(t)
    cos_of_means = float(ms @ mt / (np.linalg.norm(ms) * np.linalg.norm(mt)))
    assert cos_of_means == pytest.approx(1 / np.sqrt(2))
    assert field_similarity(s, t) != pytest.approx(cos_of_means)
    with pytest.raises(ValueError, match="non-empty"):
        mean_unit_vector(np.zeros((0, 3)))


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_text_embeddings_are_unit_and_padding_invariant(tiny_llava, pooling):
    model, processor = tiny_llava
    one = FieldEmbedder(model, processor, EmbeddingConfig(text_pooling=pooling, batch_size=1)).embed_texts(TEXTS)
    batched = FieldEmbedder(model, processor, EmbeddingConfig(text_pooling=pooling, batch_size=5)).embed_texts(TEXTS)
    assert one.shape == (5, model.config.text_config.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(one, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(batched, one, atol=1e-5)


def test_text_layer_and_pooling_are_used(tiny_llava):
    model, processor = tiny_llava
    base = FieldEmbedder(model, processor).embed_texts(TEXTS)
    layer0 = FieldEmbedder(model, processor, EmbeddingConfig(text_layer=0)).embed_texts(TEXTS)
    last = FieldEmbedder(model, processor, EmbeddingConfig(text_pooling="last")).embed_texts(TEXTS)
    assert not np.allclose(base, layer0, atol=1e-3)
    assert not np.allclose(base, last, atol=1e-3)
    # a one-token text: mean and last pooling coincide
    np.testing.assert_allclose(base[4], last[4], atol=1e-5)


def test_image_embeddings_llava_projected_and_tower(tiny_llava):
    model, processor = tiny_llava
    images = [r for r in make_source("shape", 6, seed=1)["images"]]
    images[2] = images[2] + images[3]  # a sample with two images
    proj = FieldEmbedder(model, processor, EmbeddingConfig(batch_size=1)).embed_images(images)
    proj_b = FieldEmbedder(model, processor, EmbeddingConfig(batch_size=4)).embed_images(images)
    assert proj.shape == (6, model.config.text_config.hidden_size)  # in the language model's space
    np.testing.assert_allclose(proj_b, proj, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(proj, axis=1), 1.0, atol=1e-5)
    single = FieldEmbedder(model, processor).embed_images([[im] for im in images[2]])
    np.testing.assert_allclose(proj[2], l2_normalize(single.mean(0)), atol=1e-5)  # normalized mean of its images
    tower = FieldEmbedder(model, processor, EmbeddingConfig(image_feature="tower")).embed_images(images)
    assert tower.shape == (6, model.config.vision_config.hidden_size)
    cls = FieldEmbedder(model, processor, EmbeddingConfig(image_feature="tower", image_pooling="cls"))
    assert not np.allclose(cls.embed_images(images), tower, atol=1e-3)


def test_image_embeddings_qwen2_vl(tiny_qwen2_vl):
    model, processor = tiny_qwen2_vl
    images = [r for r in make_source("chart", 4, seed=1)["images"]]
    one = FieldEmbedder(model, processor, EmbeddingConfig(batch_size=1)).embed_images(images)
    four = FieldEmbedder(model, processor, EmbeddingConfig(batch_size=4)).embed_images(images)
    np.testing.assert_allclose(four, one, atol=1e-5)
    tower = FieldEmbedder(model, processor, EmbeddingConfig(image_feature="tower", batch_size=4))
    t1 = tower.embed_images(images)
    assert t1.shape == (4, model.config.vision_config.embed_dim)
    t2 = FieldEmbedder(model, processor, EmbeddingConfig(image_feature="tower", batch_size=1)).embed_images(images)
    np.testing.assert_allclose(t1, t2, atol=1e-5)


def test_text_only_model_cannot_embed_images(tiny_llama):
    model, tok = tiny_llama
    images = [r for r in make_source("shape", 1)["images"]]
    with pytest.raises(ValueError, match="isim=False"):
        FieldEmbedder(model, tok).embed_images(images)


def test_external_sentence_transformer_by_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = bundled_text_encoder_path()
    assert os.path.isfile(os.path.join(path, "modules.json"))
    emb = FieldEmbedder(None, None, EmbeddingConfig(text_encoder=path)).embed_texts(
        ["What colour is the shape?", "Which colour is the shape in the image?", "Read the text in the image."]
    )
    assert emb.shape == (3, 384)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]  # a real sentence encoder: paraphrases are closer
    with pytest.raises(FileNotFoundError, match="not a local directory"):
        FieldEmbedder(None, None, EmbeddingConfig(text_encoder="/nonexistent/encoder")).embed_texts(["x"])


def test_config_is_validated():
    with pytest.raises(ValueError, match="text_pooling"):
        EmbeddingConfig(text_pooling="max")
    with pytest.raises(ValueError, match="image_feature"):
        EmbeddingConfig(image_feature="clip")
    assert "batch_size" not in EmbeddingConfig().key()  # results do not depend on it, so caches ignore it
