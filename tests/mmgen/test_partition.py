"""MM-GEN step 1: partition by keywords / k-means, exact shares, retrieval of candidate images, encoders."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from PIL import Image, ImageDraw

from mixwise.mmgen import (
    FixedFeatureEncoder,
    ImagePool,
    TransformersImageTextEncoder,
    load_encoder,
    partition_reference,
    retrieve_candidates,
)
from mixwise.sources import DataError
from mixwise.toy import COLOURS, SHAPES, make_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _answer(row) -> str:
    return row["messages"][1]["content"][0]["text"]


def _rows_of(family: str, answers: dict[str, int], split: str = "validation") -> datasets.Dataset:
    """Toy rows whose answers are exactly `answers` (count per answer), in toy order."""
    ds = make_source(family, 400, split)
    picked, need = [], dict(answers)
    for i, row in enumerate(ds):
        a = _answer(row)
        if need.get(a, 0) > 0:
            picked.append(i)
            need[a] -= 1
    assert not any(need.values()), need
    return ds.select(picked)


def _constructed(colour: tuple[int, int, int], kind: str, size: int = 40) -> Image.Image:
    """A hand-drawn image (not from the toy generator): one shape on a white background."""
    im = Image.new("RGB", (size, size), (250, 250, 250))
    d = ImageDraw.Draw(im)
    box = (8, 8, size - 8, size - 8)
    if kind == "circle":
        d.ellipse(box, fill=colour)
    elif kind == "square":
        d.rectangle(box, fill=colour)
    else:
        d.polygon([(size / 2, 6), (size - 6, size - 8), (6, size - 8)], fill=colour)
    return im


def _sft(images: list[Image.Image], answers: list[str]) -> datasets.Dataset:
    from mixwise.toy import features

    rows = {
        "id": [f"c/{i}" for i in range(len(images))],
        "source": ["constructed"] * len(images),
        "images": [[im] for im in images],
        "messages": [
            [
                {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "Colour?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": a}]},
            ]
            for a in answers
        ],
    }
    return datasets.Dataset.from_dict(rows, features=features("sft"))


def test_keywords_assign_constructed_images_to_the_right_colour():
    rgb = {"red": (230, 20, 20), "blue": (20, 60, 230), "green": (30, 170, 40)}
    truth = ["red", "blue", "green", "green", "red", "blue", "red", "green", "blue", "red"]
    kinds = ["circle", "square", "triangle"]
    images = [_constructed(rgb[c], kinds[i % 3]) for i, c in enumerate(truth)]
    part = partition_reference(_sft(images, truth), FixedFeatureEncoder(), keywords=["red", "blue", "green"])
    assert part.method == "keywords"
    assert [part.names[g] for g in part.assignment] == truth
    assert part["red"].members == [0, 4, 6, 9] and part["green"].members == [2, 3, 7]
    assert part.shares == {"red": 0.4, "blue": 0.3, "green": 0.3}


def test_keywords_assign_every_toy_colour_and_shape():
    colours = _rows_of("colour", {c: 4 for c in COLOURS})
    part = partition_reference(colours, FixedFeatureEncoder(), keywords=list(COLOURS))
    assert [part.names[g] for g in part.assignment] == [_answer(r) for r in colours]
    shapes = _rows_of("shape", {s: 5 for s in SHAPES})
    part = partition_reference(shapes, FixedFeatureEncoder(), keywords=[f"a {s}" for s in SHAPES])
    assert [SHAPES[g] for g in part.assignment] == [_answer(r) for r in shapes]


def test_subgroup_counts_follow_the_shares_exactly():
    ref = _rows_of("colour", {"red": 5, "blue": 3, "green": 2})
    part = partition_reference(ref, FixedFeatureEncoder(), keywords=["red", "blue", "green", "pink"])
    assert {g.name: len(g.members) for g in part.subgroups} == {"red": 5, "blue": 3, "green": 2, "pink": 0}
    # hand-computed largest remainder: 7 * (.5, .3, .2) = 3.5, 2.1, 1.4 -> floors 3, 2, 1, the leftover unit to red
    assert part.counts(7) == {"red": 4, "blue": 2, "green": 1, "pink": 0}
    # 10 * shares is exact; 3 * shares = 1.5, .9, .6 -> 1, 0, 0 then two units to .9 and .6
    assert part.counts(10) == {"red": 5, "blue": 3, "green": 2, "pink": 0}
    assert part.counts(3) == {"red": 1, "blue": 1, "green": 1, "pink": 0}
    for total in range(1, 40):
        counts = part.counts(total)
        assert sum(counts.values()) == total
        for g in part.subgroups:
            assert abs(counts[g.name] - total * g.share) < 1  # within one unit of the exact quota


def test_retrieval_gives_exact_counts_of_matching_distinct_images():
    ref = _rows_of("colour", {"red": 2, "blue": 2, "green": 2})
    part = partition_reference(ref, FixedFeatureEncoder(), keywords=["red", "blue", "green"])
    pool_ds = make_source("colour", 120, "train")
    pool = ImagePool.from_dataset(pool_ds, name="pool")
    counts = {"red": 4, "blue": 2, "green": 3}
    retrieval = retrieve_candidates(pool.embed(FixedFeatureEncoder()), pool.ids, part, counts)
    assert {g: len(c) for g, c in retrieval.candidates.items()} == counts
    truth = {row["id"]: _answer(row) for row in pool_ds}
    taken = [c.image_id for cands in retrieval.candidates.values() for c in cands]
    assert len(set(taken)) == len(taken)  # no image annotated for two subgroups
    for name, cands in retrieval.candidates.items():
        assert all(truth[c.image_id] == name for c in cands), [(c.image_id, truth[c.image_id]) for c in cands]
        sims = [c.similarity for c in cands]
        assert sims == sorted(sims, reverse=True)
    assert retrieval.reused == 0 and retrieval.off_preference == 0


def test_retrieval_reuses_images_with_new_variants_when_the_pool_is_too_small():
    ref = _rows_of("colour", {"red": 1, "blue": 1})
    part = partition_reference(ref, FixedFeatureEncoder(), keywords=["red", "blue"])
    pool = ImagePool.from_dataset(make_source("colour", 5, "train"), name="small")
    retrieval = retrieve_candidates(pool.embed(FixedFeatureEncoder()), pool.ids, part, {"red": 4, "blue": 3})
    cands = [c for cs in retrieval.candidates.values() for c in cs]
    assert len(cands) == 7 and retrieval.reused == 2
    keys = [(c.image_id, c.variant) for c in cands]
    assert len(set(keys)) == 7  # an image appears at most once per variant
    assert sorted(c.variant for c in cands) == [0, 0, 0, 0, 0, 1, 1]


def test_kmeans_without_keywords_finds_pure_clusters():
    ref = _rows_of("colour", {"red": 4, "blue": 3, "yellow": 5})
    part = partition_reference(ref, FixedFeatureEncoder(), n_clusters=3, seed=0)
    assert part.method == "kmeans" and part.names == ["cluster_0", "cluster_1", "cluster_2"]
    answers = [_answer(r) for r in ref]
    members = {g.name: sorted({answers[i] for i in g.members}) for g in part.subgroups}
    assert all(len(v) == 1 for v in members.values()), members  # each cluster holds one colour
    assert members["cluster_0"] == [answers[0]]  # named in order of first member
    assert sorted(len(g.members) for g in part.subgroups) == [3, 4, 5]
    assert sum(part.counts(12).values()) == 12
    # the centroid query retrieves images of the cluster's colour
    pool_ds = make_source("colour", 80, "train")
    pool = ImagePool.from_dataset(pool_ds, name="pool")
    retrieval = retrieve_candidates(pool.embed(FixedFeatureEncoder()), pool.ids, part, part.counts(6))
    truth = {row["id"]: _answer(row) for row in pool_ds}
    for name, cands in retrieval.candidates.items():
        assert {truth[c.image_id] for c in cands} <= set(members[name])


def test_errors_name_the_problem():
    ref = _rows_of("colour", {"red": 2})
    with pytest.raises(ValueError, match="'teapot'"):
        partition_reference(ref, FixedFeatureEncoder(), keywords=["red", "teapot"])
    with pytest.raises(ValueError, match="repeated"):
        partition_reference(ref, FixedFeatureEncoder(), keywords=["red", "red"])
    with pytest.raises(ValueError, match="n_clusters=3 exceeds"):
        partition_reference(ref, FixedFeatureEncoder(), n_clusters=3)
    text_only = datasets.Dataset.from_dict({"prompt": ["q0", "q1"], "answer": ["a", "b"]})
    with pytest.raises(DataError, match="source 'ref', row 0, field 'images'"):
        partition_reference(text_only, FixedFeatureEncoder(), keywords=["red"], source="ref")


def test_image_pool_from_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    _constructed((230, 20, 20), "circle").save(tmp_path / "b.png")
    _constructed((20, 60, 230), "square").save(tmp_path / "sub" / "a.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    pool = ImagePool.from_folder(tmp_path)
    assert pool.ids == ["b.png", "sub/a.jpg"]
    emb = pool.embed(FixedFeatureEncoder())
    texts = FixedFeatureEncoder().embed_texts(["red", "blue"])
    assert np.argmax(emb @ texts.T, axis=1).tolist() == [0, 1]
    (tmp_path / "broken.png").write_bytes(b"garbage")
    pool = ImagePool.from_folder(tmp_path)
    with pytest.raises(DataError, match="'broken.png'"):
        pool.load(pool.ids.index("broken.png"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        ImagePool.from_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImagePool.from_folder(tmp_path / "missing")


def test_fixed_encoder_text_lexicon():
    enc = FixedFeatureEncoder()
    assert enc.text_concepts("Two crimson circles and a box") == ["red", "circle", "square"]
    vecs = enc.embed_texts(["red", "crimson", "nothing known"])
    assert np.allclose(vecs[0], vecs[1]) and not vecs[2].any()
    assert np.isclose(np.linalg.norm(vecs[0]), 1.0)


def _tiny_clip(path):
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from mixwise.testing import build_tokenizer

    tok = build_tokenizer()
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=64,
            **ids,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(path)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(path)
    return path


def test_transformers_clip_encoder_by_local_path(tmp_path, tiny_llama_path):
    """A tiny random CLIP saved locally: loading, shapes and normalization (random weights: no semantics)."""
    path = _tiny_clip(tmp_path / "clip")
    enc = load_encoder(str(path))
    assert isinstance(enc, TransformersImageTextEncoder)
    images = [r["images"][0] for r in make_source("colour", 5, "train")]
    img = enc.embed_images(images)
    txt = enc.embed_texts(["red", "a blue square", "green"])
    assert img.shape == (5, 16) and txt.shape == (3, 16)
    assert np.allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    assert np.allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(img[0], img[1])  # different images, different vectors
    part = partition_reference(make_source("colour", 6, "validation"), enc, keywords=["red", "blue"])
    assert sum(len(g.members) for g in part.subgroups) == 6
    with pytest.raises(TypeError, match="get_image_features"):
        TransformersImageTextEncoder(tiny_llama_path)
    with pytest.raises(FileNotFoundError, match="not 'fixed'"):
        load_encoder(str(tmp_path / "missing"))
