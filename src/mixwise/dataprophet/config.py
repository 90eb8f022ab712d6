"""DataProphet's configuration: one flat dataclass that is also the `mixwise score` command line and YAML schema.

Fields follow TRL's config style (`field(metadata={"help": ...})`, parsed by `trl.TrlParser`). The term switches
(`qsim`, `asim`, `isim`, `ppl`, `diversity`) give `--no_qsim` etc. on the command line; [`Terms`] is their value
object, [`DataProphetConfig.embedding`] and [`DataProphetConfig.perplexity`] the signal settings handed to
[`mixwise.signals`] (whose `key()`s name the cached signals).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..signals.embeddings import EmbeddingConfig, bundled_text_encoder_path
from ..signals.perplexity import PerplexityConfig

__all__ = [
    "ABLATIONS",
    "ALLOCATION_OPTIONS",
    "PAPER_ABLATION_TAU",
    "PRESETS",
    "PRESET_VALUES",
    "TERM_NAMES",
    "DataProphetConfig",
    "Terms",
]

TERM_NAMES = ("qsim", "asim", "isim", "ppl", "diversity")


@dataclass
class Terms:
    """Which factors of M are used; a switched-off factor is replaced by 1."""

    qsim: bool = True
    asim: bool = True
    isim: bool = True
    ppl: bool = True
    diversity: bool = True

    @classmethod
    def without(cls, *names: str) -> Terms:
        unknown = [n for n in names if n not in TERM_NAMES]
        if unknown:
            raise ValueError(f"unknown DataProphet terms {unknown}; terms are {list(TERM_NAMES)}")
        return cls(**{n: n not in names for n in TERM_NAMES})

    def enabled(self) -> list[str]:
        return [n for n in TERM_NAMES if getattr(self, n)]

    def flags(self) -> dict[str, bool]:
        """`{term: on}`, the [`DataProphetConfig`] fields (`replace(config, **terms.flags())`)."""
        return asdict(self)


ABLATIONS: dict[str, Terms] = {
    "full": Terms(),
    "no_ppl": Terms.without("ppl"),
    "no_isim": Terms.without("isim"),
    "no_diversity": Terms.without("diversity"),
    "no_qsim": Terms.without("qsim"),
    "no_asim": Terms.without("asim"),
}
"""The paper's ablations (Table 2), by name."""

PAPER_ABLATION_TAU: dict[str, float] = {
    "full": 0.860,
    "no_ppl": 0.487,
    "no_isim": 0.625,
    "no_diversity": 0.659,
    "no_qsim": 0.778,
    "no_asim": 0.810,
}
"""Mean Kendall tau of each ablation reported by the paper (14 datasets, InternVL3-2B)."""

SHARPEN_RULES = ("none", "power", "temperature")
COMBINE_RULES = ("mean", "weighted")
PRESETS = ("default", "paper")
CENTRES = ("none", "pooled")
SIGN_RULES = ("signed", "clip", "shift")
PPL_GUARDS = ("none", "cap", "band")

PRESET_VALUES: dict[str, dict[str, Any]] = {
    "paper": {
        "centre": "none",
        "similarity_sign": "signed",
        "ppl_guard": "none",
        "diversity_dedup": False,
        "dedup_rows": False,
    },
    "default": {
        "centre": "pooled",
        "similarity_sign": "clip",
        "ppl_guard": "band",
        "diversity_dedup": True,
        "dedup_rows": True,
    },
}
"""The allocation-stage options of each preset. `paper`: the paper's exact formulas. `default`: the fixes, with the
values `benchmarks/selection_quality.py` chose (see its RESULTS file for the ablation)."""
ALLOCATION_OPTIONS = tuple(PRESET_VALUES["paper"])


def parse_target_weights(value: Any) -> dict[str, float] | None:
    """`{target: λ}` from a mapping, `NAME=WEIGHT` items (a list, or one comma-separated string) or a JSON object."""
    if value is None or isinstance(value, Mapping):
        return None if value is None else {str(k): float(v) for k, v in value.items()}
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            return parse_target_weights(json.loads(text))
        value = [item for item in text.split(",") if item.strip()]
    out = {}
    for item in value:
        name, sep, weight = str(item).partition("=")
        if not sep:
            raise ValueError(f"target_weights expects NAME=WEIGHT items, got {item!r}")
        try:
            out[name.strip()] = float(weight)
        except ValueError:
            raise ValueError(f"target_weights: weight of {name!r} is not a number: {weight!r}") from None
    return out


@dataclass
class DataProphetConfig:
    """Configuration of [`mixwise.dataprophet.DataProphet`] (see the package docstring for the formulas).

    Parsed by `trl.TrlParser` as the `mixwise score` command line (`--subsample 256 --no_ppl --sharpen power`) and
    YAML schema; `DataProphet(**fields)` takes the same names.
    """

    subsample: int | None = field(
        default=512,
        metadata={"help": "Rows per dataset the signals are computed on (seeded, without replacement; 0 = all)."},
    )
    seed: int = field(
        default=0,
        metadata={"help": "Seed of the subsamples, of k-means and of the plan's row draws (not the training seed)."},
    )
    qsim: bool = field(default=True, metadata={"help": "Use the question-similarity factor QSim (--no_qsim: off)."})
    asim: bool = field(default=True, metadata={"help": "Use the answer-similarity factor ASim (--no_asim: off)."})
    isim: bool = field(default=True, metadata={"help": "Use the image-similarity factor ISim (--no_isim: off)."})
    ppl: bool = field(default=True, metadata={"help": "Use the perplexity ratio PPL(s)/PPL(t) (--no_ppl: off)."})
    diversity: bool = field(default=True, metadata={"help": "Use the diversity factor Sil + H (--no_diversity: off)."})
    n_clusters: int = field(default=10, metadata={"help": "K of the diversity k-means (paper: 10)."})
    kmeans_n_init: int = field(default=10, metadata={"help": "k-means restarts."})
    sharpen: str = field(
        default="none",
        metadata={
            "help": "Allocation: none (proportional, the paper), power (M^power) or temperature (softmax(M/T))."
        },
    )
    power: float = field(default=1.0, metadata={"help": "Exponent of sharpen=power."})
    temperature: float = field(default=0.05, metadata={"help": "T of sharpen=temperature."})
    combine: str = field(
        default="mean",
        metadata={
            "help": "Several targets: mean (each target's weights count the same) or weighted (target_weights)."
        },
    )
    target_weights: list[str] | None = field(
        default=None,
        metadata={
            "help": "Per-target weights NAME=W (implies combine=weighted; normalized, a target left out gets 0). "
            "The API also takes a {target: weight} dict."
        },
    )
    preset: str = field(
        default="default",
        metadata={
            "help": "default (mixwise's fixes below, chosen by benchmarks/selection_quality.py) or paper (the paper's "
            "exact formulas). Sets every allocation option left unset (None)."
        },
    )
    centre: str | None = field(
        default=None,
        metadata={
            "help": "Field similarity: none (paper: dot of the mean unit vectors) or pooled (cosine of the mean unit "
            "vectors after subtracting their mean over every source and target)."
        },
    )
    similarity_sign: str | None = field(
        default=None,
        metadata={
            "help": "Negative similarities: signed (paper: multiplied as they are, so two negatives agree), clip "
            "(max(sim, 0)) or shift ((1 + sim) / 2)."
        },
    )
    ppl_guard: str | None = field(
        default=None,
        metadata={
            "help": "The perplexity ratio r = PPL(s)/PPL(t): none (paper: r), cap (min(r, ppl_cap)) or band (r up to "
            "ppl_cap, ppl_cap^2 / r above: off-distribution or mislabelled data is not rewarded)."
        },
    )
    ppl_cap: float = field(
        default=1.0,
        metadata={
            "help": "C of ppl_guard=cap / band (band with C = 1: min(r, 1/r), a source as hard as the target wins)."
        },
    )
    diversity_dedup: bool | None = field(
        default=None,
        metadata={
            "help": "Duplicate-aware diversity: exact duplicate rows (same images and text) count once, scaled by "
            "the distinct share."
        },
    )
    dedup_rows: bool | None = field(
        default=None,
        metadata={
            "help": "Plans draw distinct rows first: a source gets at most its number of distinct rows (the rest "
            "goes to the other sources), instance selection takes one copy of a duplicated row (exact duplicates: "
            "same images and text)."
        },
    )
    text_encoder: str = field(
        default="model",
        metadata={
            "help": "Text encoder: model (the base LM), minilm (the offline package) or a sentence-transformers dir."
        },
    )
    text_layer: int = field(default=-1, metadata={"help": "LM hidden-state layer for text embeddings (-1: last)."})
    text_pooling: str = field(default="mean", metadata={"help": "Text pooling: mean or last (token)."})
    image_feature: str = field(
        default="projected", metadata={"help": "Image embedding: projected (tower + projector) or tower."}
    )
    image_layer: int = field(default=-1, metadata={"help": "Vision tower layer (image_feature=tower)."})
    image_pooling: str = field(default="mean", metadata={"help": "Image pooling: mean or cls (image_feature=tower)."})
    max_text_tokens: int | None = field(
        default=512, metadata={"help": "A field's text is cut to this many tokens before embedding."}
    )
    batch_size: int = field(default=8, metadata={"help": "Rows per forward pass (results do not depend on it)."})
    embedding_batch_size: int = field(
        default=16, metadata={"help": "Texts or images per embedding pass (results do not depend on it)."}
    )
    max_length: int | None = field(
        default=None, metadata={"help": "A row longer than this many tokens is a bad row (never silently cut)."}
    )
    on_error: str = field(default="raise", metadata={"help": "Bad rows: raise (naming them) or skip (and count)."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Per-dataset signal cache directory (None: in memory only)."}
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self):
        if self.subsample is not None and self.subsample == 0:
            self.subsample = None
        if self.subsample is not None and self.subsample < 1:
            raise ValueError(f"subsample must be >= 1, or 0 / None for all rows, got {self.subsample}")
        if self.sharpen not in SHARPEN_RULES:
            raise ValueError(f"sharpen must be one of {SHARPEN_RULES}, got {self.sharpen!r}")
        if self.sharpen == "power" and self.power <= 0:
            raise ValueError(f"power must be > 0, got {self.power}")
        if self.sharpen == "temperature" and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        self.target_weights = parse_target_weights(self.target_weights)
        if self.target_weights and self.combine == "mean":
            self.combine = "weighted"
        if self.combine not in COMBINE_RULES:
            raise ValueError(f"combine must be one of {COMBINE_RULES}, got {self.combine!r}")
        if self.combine == "weighted" and not self.target_weights:
            raise ValueError("combine='weighted' needs target_weights ({target: weight})")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")
        if self.n_clusters < 2:
            raise ValueError(f"n_clusters must be >= 2, got {self.n_clusters}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        for name, value in PRESET_VALUES[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name, allowed in (("centre", CENTRES), ("similarity_sign", SIGN_RULES), ("ppl_guard", PPL_GUARDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.ppl_cap <= 0:
            raise ValueError(f"ppl_cap must be > 0, got {self.ppl_cap}")

        self.embedding  # validates the embedding settings  # noqa: B018
        self.perplexity  # noqa: B018

    @classmethod
    def paper(cls, **overrides: Any) -> DataProphetConfig:
        """The paper's exact formulas (`preset="paper"`), with `overrides`."""
        return cls(**{"preset": "paper", **overrides})

    @property
    def is_paper(self) -> bool:
        """True when every allocation option has the paper's value (the allocation uses the paper's M)."""
        return all(getattr(self, k) == v for k, v in PRESET_VALUES["paper"].items())

    def allocation_options(self) -> dict[str, Any]:
        """The allocation-stage options as resolved (`centre`, `similarity_sign`, `ppl_guard`, `ppl_cap`,
        `diversity_dedup`, `dedup_rows`)."""
        keys = (*ALLOCATION_OPTIONS, "ppl_cap")
        return {"preset": self.preset, **{k: getattr(self, k) for k in keys}}

    @property
    def terms(self) -> Terms:
        return Terms(**{n: getattr(self, n) for n in TERM_NAMES})

    def with_terms(self, terms: Terms) -> DataProphetConfig:
        """A copy with these term switches."""
        return replace(self, **terms.flags())

    @property
    def embedding(self) -> EmbeddingConfig:
        """The field-embedding settings ([`mixwise.signals.embeddings.EmbeddingConfig`])."""
        encoder = bundled_text_encoder_path() if self.text_encoder == "minilm" else self.text_encoder
        return EmbeddingConfig(
            text_encoder=encoder,
            text_layer=self.text_layer,
            text_pooling=self.text_pooling,
            image_feature=self.image_feature,
            image_layer=self.image_layer,
            image_pooling=self.image_pooling,
            max_text_tokens=self.max_text_tokens,
            batch_size=self.embedding_batch_size,
        )

    @property
    def perplexity(self) -> PerplexityConfig:
        """The perplexity settings ([`mixwise.signals.perplexity.PerplexityConfig`])."""
        return PerplexityConfig(batch_size=self.batch_size, max_length=self.max_length)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        """The configuration as the manifest records it (terms, embedding and perplexity settings nested)."""
        flat = asdict(self)
        d: dict[str, Any] = {"subsample": self.subsample, "seed": self.seed, "terms": self.terms.flags()}
        for key in ("n_clusters", "kmeans_n_init", "sharpen", "power", "temperature", "combine", "target_weights"):
            d[key] = flat[key]
        d["allocation"] = self.allocation_options()
        d["embedding"] = asdict(self.embedding)
        d["perplexity"] = asdict(self.perplexity)
        for key in ("on_error", "cache_dir", "progress"):
            d[key] = flat[key]
        return d


def config_from(settings: DataProphetConfig | None, overrides: Mapping[str, Any]) -> DataProphetConfig:
    """`settings` (default: all defaults) with `overrides` applied; unknown names raise naming the known ones."""
    settings = settings or DataProphetConfig()
    if not overrides:
        return settings
    known = set(DataProphetConfig.field_names())
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown DataProphet options {unknown}; options are {sorted(known)}")
    if "preset" in overrides and overrides["preset"] != settings.preset:
        # a new preset re-resolves every allocation option not given explicitly
        overrides = {**{k: None for k in ALLOCATION_OPTIONS if k not in overrides}, **overrides}
    return replace(settings, **overrides)
