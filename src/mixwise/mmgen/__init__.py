"""MM-GEN end to end: partition → retrieve → generate → filter → a pool-ready `datasets.Dataset`.

MM-GEN (Joshi et al., 2025, "MM-GEN: Enhancing Task Performance Through Targeted Multimodal Data Curation",
arXiv:2501.04155; SPEC section 4) curates task-specific training data in three steps:

1. [`partition`](partition.py), with the image–text [`encoders`](encoders.py), — subgroups of the target's reference set (keywords or k-means) and candidate images per
   subgroup, their numbers proportional to the subgroups' shares (exact largest remainder);
2. [`prompts`](prompts.py), [`generators`](generators.py), [`parsing`](parsing.py), [`log`](log.py) and
   [`generation`](generation.py) — N question–answer pairs per candidate image from a stronger VLM (local or an
   OpenAI-compatible endpoint), parsed and repaired, into a resumable log;
3. [`filtering`](filtering.py) — near duplicates, then the low and high perplexity tails under the model to be trained.

The output has the spine's SFT schema — `id`, `source`, `images`, `messages` (a user turn `[image, question]`, an
assistant turn `[answer]`, content parts exactly like [`mixwise.toy`]'s) — plus the provenance columns
`subgroup`, `generator`, `prompt_id` and `image_id`, so it joins a pool (`Mixture`, `concatenate_datasets`) and
can be scored per sample (DataProphet's instance-level score).

[`pipeline`](pipeline.py): [`run_pipeline`] takes objects; [`run_mmgen`] builds them from a [`GenerateConfig`]
([`config`](config.py)) (the `mixwise generate`
command). The output directory holds `generations.jsonl` (the resumable log), `partition.json`,
`generation_report.json`, `filter_report.json`, `report.json`, `unfiltered/` and `dataset/` (`save_to_disk`).
[`server`](server.py) is a small OpenAI-compatible endpoint over a local model (tests, demos). Rerunning with the same configuration continues where a crash stopped and never duplicates a row.
"""

from .config import GenerateConfig
from .encoders import FixedFeatureEncoder, ImageTextEncoder, TransformersImageTextEncoder, load_encoder
from .filtering import (
    REASON_DUPLICATE,
    REASON_HIGH_PPL,
    REASON_LOW_PPL,
    FilterConfig,
    FilterReport,
    embed_pair_texts,
    filter_rows,
    near_duplicates,
    pair_text,
    row_perplexities,
    tail_counts,
)
from .generation import GenerationReport, GenerationStats, collect_rows, run_generation
from .generators import (
    RETRY_STATUSES,
    GenerationOutput,
    GenerationRequest,
    Generator,
    HTTPStatusError,
    LocalVLMGenerator,
    OpenAIChatGenerator,
    ScriptedGenerator,
    ToyRuleGenerator,
    image_data_url,
)
from .log import GenerationLog
from .parsing import ParseResult, parse_pairs
from .partition import (
    IMAGE_EXTENSIONS,
    Candidate,
    ImagePool,
    Partition,
    Retrieval,
    Subgroup,
    partition_reference,
    reference_images,
    retrieve_candidates,
)
from .pipeline import (
    LOG_NAME,
    PROVENANCE_COLUMNS,
    MMGenResult,
    features,
    load_pool,
    load_reference,
    load_trainee,
    make_generator,
    pairs_to_dataset,
    run_mmgen,
    run_pipeline,
    sft_row,
)
from .prompts import DEFAULT_TASK, GenerationItem, build_prompt, make_items, prompt_id

__all__ = [
    "DEFAULT_TASK",
    "IMAGE_EXTENSIONS",
    "LOG_NAME",
    "PROVENANCE_COLUMNS",
    "REASON_DUPLICATE",
    "REASON_HIGH_PPL",
    "REASON_LOW_PPL",
    "RETRY_STATUSES",
    "build_prompt",
    "collect_rows",
    "embed_pair_texts",
    "features",
    "filter_rows",
    "image_data_url",
    "load_encoder",
    "load_pool",
    "load_reference",
    "load_trainee",
    "make_generator",
    "make_items",
    "near_duplicates",
    "pair_text",
    "pairs_to_dataset",
    "parse_pairs",
    "partition_reference",
    "prompt_id",
    "reference_images",
    "retrieve_candidates",
    "row_perplexities",
    "run_generation",
    "run_mmgen",
    "run_pipeline",
    "sft_row",
    "tail_counts",
    "Candidate",
    "FilterConfig",
    "FilterReport",
    "FixedFeatureEncoder",
    "GenerateConfig",
    "GenerationItem",
    "GenerationLog",
    "GenerationOutput",
    "GenerationReport",
    "GenerationRequest",
    "GenerationStats",
    "Generator",
    "HTTPStatusError",
    "ImagePool",
    "ImageTextEncoder",
    "LocalVLMGenerator",
    "MMGenResult",
    "OpenAIChatGenerator",
    "ParseResult",
    "Partition",
    "Retrieval",
    "ScriptedGenerator",
    "Subgroup",
    "ToyRuleGenerator",
    "TransformersImageTextEncoder",
]
