"""MM-GEN end to end: partition → retrieve → generate → filter → a pool-ready `datasets.Dataset`."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from tqdm.auto import tqdm

from ..files import atomic_save_dataset, atomic_write_json
from .config import GenerateConfig
from .encoders import ImageTextEncoder, load_encoder
from .filtering import FilterConfig, FilterReport, filter_rows
from .generation import GenerationReport, GenerationStats, collect_rows, run_generation
from .generators import Generator, LocalVLMGenerator, OpenAIChatGenerator, ToyRuleGenerator
from .partition import ImagePool, Partition, Retrieval, partition_reference, retrieve_candidates
from .prompts import GenerationItem, make_items

PROVENANCE_COLUMNS = ("subgroup", "generator", "prompt_id", "image_id")
LOG_NAME = "generations.jsonl"


def features() -> datasets.Features:
    """The output schema: the toy world's SFT features plus the provenance columns (strings)."""
    from ..toy import features as toy_features

    feats = dict(toy_features("sft"))
    feats.update({c: datasets.Value("string") for c in PROVENANCE_COLUMNS})
    return datasets.Features(feats)


def sft_row(question: str, answer: str, image: Any, row_id: str, source: str, **provenance: str) -> dict[str, Any]:
    """One SFT row, content parts shaped exactly like [`mixwise.toy.make_source`]'s."""
    return {
        "id": row_id,
        "source": source,
        "images": [image],
        "messages": [
            {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        **{c: str(provenance.get(c, "")) for c in PROVENANCE_COLUMNS},
    }


def pairs_to_dataset(
    pair_rows: Sequence[Mapping[str, Any]], pool: ImagePool, source: str = "mmgen"
) -> datasets.Dataset:
    """The SFT dataset of [`mixwise.mmgen.generation.collect_rows`] records (images read from `pool`)."""
    rows = [
        sft_row(
            r["question"],
            r["answer"],
            pool.load(r["image_index"]),
            f"{source}/{r['image_id']}/{r['prompt_id']}/{r['pair']}",
            source,
            subgroup=r["subgroup"],
            generator=r["generator"],
            prompt_id=r["prompt_id"],
            image_id=r["image_id"],
        )
        for r in tqdm(pair_rows, desc="building rows", disable=len(pair_rows) < 5000)
    ]
    if not rows:
        return datasets.Dataset.from_dict({c: [] for c in features()}, features=features())
    return datasets.Dataset.from_list(rows, features=features())


@dataclass
class MMGenResult:
    """Everything one run produced."""

    dataset: datasets.Dataset
    unfiltered: datasets.Dataset
    partition: Partition
    retrieval: Retrieval
    items: list[GenerationItem]
    generation: GenerationStats
    generation_report: GenerationReport
    filter_report: FilterReport | None
    out: Path
    summary: dict[str, Any] = field(default_factory=dict)


def run_pipeline(
    reference: datasets.Dataset,
    pool: ImagePool,
    generator: Generator,
    out: str | os.PathLike,
    config: GenerateConfig | None = None,
    encoder: ImageTextEncoder | None = None,
    model: Any = None,
    processor: Any = None,
    progress: bool = True,
) -> MMGenResult:
    """Run MM-GEN on given objects; `config` supplies the numbers (keywords, budget, N, filter settings, seed).

    `model` / `processor`: the model to be trained, for the perplexity filter (required unless
    `config.no_filter`).
    """
    cfg = config or GenerateConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    encoder = encoder or load_encoder(cfg.encoder)

    partition = partition_reference(
        reference,
        encoder,
        keywords=cfg.keywords,
        n_clusters=cfg.n_clusters,
        keyword_template=cfg.keyword_template,
        seed=cfg.seed,
        source=cfg.target,
    )
    counts = partition.counts(cfg.num_images)
    retrieval = retrieve_candidates(pool.embed(encoder), pool.ids, partition, counts)
    atomic_write_json(
        out / "partition.json",
        {**partition.summary(), "counts": counts, "retrieval": retrieval.summary(), "pool": pool.name},
    )
    items = make_items(
        retrieval,
        partition,
        reference,
        task_description=cfg.task_description,
        n_pairs=cfg.pairs_per_image,
        num_examples=cfg.num_examples,
        seed=cfg.seed,
        source=cfg.target,
    )
    log_path = out / LOG_NAME
    stats = run_generation(items, pool, generator, log_path, progress=progress)
    pair_rows, gen_report = collect_rows(items, log_path)
    atomic_write_json(out / "generation_report.json", {**gen_report.to_dict(), "run": stats.to_dict()})
    unfiltered = pairs_to_dataset(pair_rows, pool, cfg.source_name)
    atomic_save_dataset(unfiltered, out / "unfiltered")

    filter_report: FilterReport | None = None
    if cfg.no_filter or len(unfiltered) == 0:
        dataset = unfiltered
    else:
        if model is None or processor is None:
            raise ValueError("the perplexity filter needs the model to be trained and its processor (or no_filter)")
        fcfg = FilterConfig(
            low_fraction=cfg.low_fraction,
            high_fraction=cfg.high_fraction,
            dedup_threshold=cfg.dedup_threshold,
            dedup_scope=cfg.dedup_scope,
            text_encoder=cfg.text_encoder,
            batch_size=cfg.filter_batch_size,
            max_length=cfg.max_length,
        )
        rows = [unfiltered[i] for i in range(len(unfiltered))]
        kept, filter_report, ppl = filter_rows(
            rows,
            model,
            processor,
            fcfg,
            ids=unfiltered["id"],
            groups=unfiltered["image_id"],
            progress=progress,
        )
        filter_report.save(out / "filter_report.json")
        dataset = unfiltered.select(kept)
    atomic_save_dataset(dataset, out / "dataset")

    kept_per = Counter(dataset["subgroup"]) if len(dataset) else Counter()
    summary = {
        "method": "mmgen",
        "config": asdict(cfg),
        "encoder": partition.encoder,
        "generator": getattr(generator, "name", type(generator).__name__),
        "subgroups": {
            g.name: {
                "share": g.share,
                "images": counts[g.name],
                "pairs_requested": counts[g.name] * cfg.pairs_per_image,
                "pairs_parsed": gen_report.per_subgroup.get(g.name, {}).get("pairs", 0),
                "pairs_kept": kept_per.get(g.name, 0),
            }
            for g in partition.subgroups
        },
        "items": len(items),
        "pairs_parsed": len(unfiltered),
        "pairs_kept": len(dataset),
        "rejected_items": gen_report.rejected,
        "filter": filter_report.by_reason if filter_report else None,
        "generation_run": stats.to_dict(),
        "seconds": round(time.time() - start, 2),
    }
    atomic_write_json(out / "report.json", summary)
    return MMGenResult(
        dataset, unfiltered, partition, retrieval, items, stats, gen_report, filter_report, out, summary
    )


# ----------------------------------------------------------------------------------------------------------------
# Building the objects from a config
# ----------------------------------------------------------------------------------------------------------------


def _toy_family(spec: str) -> str | None:
    return spec.split(":", 1)[1] if spec.startswith("toy:") else None


def load_reference(cfg: GenerateConfig) -> datasets.Dataset:
    """The reference set: `toy:FAMILY` (`reference_size` rows of `target_split`) or a `save_to_disk` directory
    (a seeded subsample of `reference_size` rows when smaller than the set)."""
    family = _toy_family(cfg.target)
    if family is not None:
        from ..toy import make_source

        return make_source(family, cfg.reference_size or 48, cfg.target_split, seed=cfg.seed)
    from ..sources import load_source

    ds = load_source(cfg.target, split=cfg.target_split, role="target").dataset
    if 0 < cfg.reference_size < len(ds):
        rng = np.random.default_rng(cfg.seed)
        ds = ds.select(np.sort(rng.choice(len(ds), cfg.reference_size, replace=False)))
    return ds


def load_pool(specs: Sequence[str], split: str = "train", size: int = 64, seed: int = 0) -> ImagePool:
    """One [`ImagePool`] over image folders, `save_to_disk` datasets and `toy:FAMILY` specs (ids must not clash;
    folder ids are prefixed with the folder's name when several specs are given)."""
    if not specs:
        raise ValueError("no image pool given")
    pools = []
    for spec in specs:
        family = _toy_family(spec)
        if family is not None:
            from ..toy import make_source

            pools.append(ImagePool.from_dataset(make_source(family, size, split, seed=seed), name=spec))
        elif os.path.isdir(spec) and (
            os.path.exists(os.path.join(spec, "dataset_info.json"))
            or os.path.exists(os.path.join(spec, "dataset_dict.json"))
        ):
            from ..sources import load_source

            src = load_source(spec, split=split)
            pools.append(ImagePool.from_dataset(src.dataset, name=src.name))
        else:
            folder = ImagePool.from_folder(spec)
            pools.append(folder.with_prefix(Path(spec).name) if len(specs) > 1 else folder)
    return pools[0] if len(pools) == 1 else ImagePool.concat(pools)


def make_generator(cfg: GenerateConfig) -> Generator:
    """The generator named by `cfg.generator`: `toy`, `local` or `openai`."""
    if cfg.generator == "toy":
        return ToyRuleGenerator(seed=cfg.seed)
    if cfg.generator == "local":
        if not cfg.generator_model:
            raise ValueError("generator 'local' needs --generator_model (a VLM directory)")
        return LocalVLMGenerator(
            cfg.generator_model,
            max_new_tokens=cfg.max_new_tokens,
            do_sample=cfg.temperature > 0,
            temperature=cfg.temperature or 1.0,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
        )
    if cfg.generator == "openai":
        if not cfg.base_url or not cfg.generator_model:
            raise ValueError("generator 'openai' needs --base_url and --generator_model (the model name)")
        return OpenAIChatGenerator(
            cfg.base_url,
            cfg.generator_model,
            max_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            concurrency=cfg.concurrency,
            timeout=cfg.timeout,
            max_retries=cfg.max_retries,
            api_key_env=cfg.api_key_env or None,
        )
    raise ValueError(f"unknown generator {cfg.generator!r}; expected toy, local or openai")


def load_trainee(spec: str, seed: int = 0) -> tuple[Any, Any]:
    """The model to be trained and its processor: `tiny-llava` (the offline zoo's) or a directory."""
    if spec == "tiny-llava":
        from ..testing import build_tiny_llava

        return build_tiny_llava(seed=seed)
    if not os.path.isdir(spec):
        raise FileNotFoundError(f"model {spec!r} is not a local directory (nothing is downloaded)")
    from ..models import load_model

    return load_model(spec)


def run_mmgen(cfg: GenerateConfig, progress: bool = True) -> MMGenResult:
    """`mixwise generate`: build reference, pool, encoder, generator and the model to be trained from `cfg`,
    then [`run_pipeline`]."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    reference = load_reference(cfg)
    pool = load_pool(cfg.pool, cfg.pool_split, cfg.pool_size, cfg.seed)
    generator = make_generator(cfg)
    model = processor = None
    if not cfg.no_filter:
        model, processor = load_trainee(cfg.model, cfg.seed)
    return run_pipeline(reference, pool, generator, cfg.out, cfg, model=model, processor=processor, progress=progress)
