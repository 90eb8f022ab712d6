"""Verifiable reward functions for GRPO-style RL post-training, in TRL's reward-function signature.

Each takes the generated `completions` and the dataset's reference column (`answer`, or `solution`) as keyword
arguments and returns one float per completion. Name them in a recipe by import path, e.g.
`reward_funcs: [mixwise.rewards.exact_match]`. [`per_source`] wraps any reward function so that its mean per
source is logged (`rewards_by_source/<source>/<name>`) through GRPOTrainer's `log_metric`.
"""

from __future__ import annotations

import functools
import importlib
import math
import re
import string
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?%?")
_CHOICE = re.compile(r"(?:^|[\s(\[])([A-Za-z])(?:[)\].:]|\s|$)")


def completion_text(completion: Any) -> str:
    """The text of a completion: a string (standard format) or the last message's content (conversational)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion:
        content = completion[-1].get("content", "") if isinstance(completion[-1], dict) else completion[-1]
        if isinstance(content, list):  # content parts
            return " ".join(p.get("text") or "" for p in content if isinstance(p, dict))
        return str(content)
    return ""


def normalize_answer(text: str) -> str:
    """SQuAD-style normalization: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _references(kwargs: dict[str, Any], n: int) -> list[str]:
    for key in ("answer", "solution"):
        if key in kwargs and kwargs[key] is not None:
            refs = kwargs[key]
            if len(refs) != n:
                raise ValueError(f"{key!r} has {len(refs)} entries for {n} completions")
            return [str(r) for r in refs]
    raise KeyError("reward function needs an 'answer' or 'solution' column in the dataset")


def exact_match(completions: list[Any], **kwargs: Any) -> list[float]:
    """1.0 when the normalized completion equals the normalized reference answer, else 0.0."""
    refs = _references(kwargs, len(completions))
    return [float(normalize_answer(completion_text(c)) == normalize_answer(r)) for c, r in zip(completions, refs)]


def parse_number(text: str) -> float | None:
    """The last number in `text` (thousands separators and a trailing % allowed), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    token = found[-1].replace(",", "")
    percent = token.endswith("%")
    try:
        value = float(token.rstrip("%"))
    except ValueError:
        return None
    return value / 100 if percent else value


def numeric_match(completions: list[Any], rel_tol: float = 0.05, abs_tol: float = 1e-6, **kwargs: Any) -> list[float]:
    """1.0 when the last number in the completion is within `rel_tol` (relative) or `abs_tol` of the reference
    (ChartQA's relaxed accuracy uses 5%), else 0.0. A completion without a number scores 0."""
    refs = _references(kwargs, len(completions))
    out = []
    for c, r in zip(completions, refs):
        got, want = parse_number(completion_text(c)), parse_number(r)
        if got is None or want is None:
            out.append(
                float(got is None and want is None and normalize_answer(completion_text(c)) == normalize_answer(r))
            )
        else:
            out.append(float(math.isclose(got, want, rel_tol=rel_tol, abs_tol=abs_tol)))
    return out


def parse_choice(text: str) -> str | None:
    """The first standalone option letter in `text` ("B", "(b)", "B.", "Answer: C"), upper-cased, or None."""
    m = _CHOICE.search(text.strip())
    return m.group(1).upper() if m else None


def multiple_choice(completions: list[Any], **kwargs: Any) -> list[float]:
    """1.0 when the chosen option letter equals the reference letter, else 0.0."""
    refs = _references(kwargs, len(completions))
    return [
        float(parse_choice(completion_text(c)) is not None and parse_choice(completion_text(c)) == parse_choice(r))
        for c, r in zip(completions, refs)
    ]


def per_source(reward_fn: Callable[..., list[float]], source_column: str = "source") -> Callable[..., list[float]]:
    """Wrap a reward function so that its mean reward per source is logged each call.

    Uses the `log_metric` callable that GRPOTrainer passes to reward functions; the metric name is
    `rewards_by_source/<source>/<reward name>`. Without `log_metric` (or a source column) the wrapper is a no-op.
    """
    name = getattr(reward_fn, "__name__", "reward")

    @functools.wraps(reward_fn)
    def wrapped(completions, **kwargs):
        rewards = reward_fn(completions, **kwargs)
        log_metric, sources = kwargs.get("log_metric"), kwargs.get(source_column)
        if log_metric is not None and sources is not None:
            by_source: dict[str, list[float]] = defaultdict(list)
            for s, r in zip(sources, rewards):
                if r is not None:
                    by_source[s].append(float(r))
            for s, values in sorted(by_source.items()):
                log_metric(f"rewards_by_source/{s}/{name}", sum(values) / len(values))
        return rewards

    return wrapped


def resolve_reward(path: str) -> Callable[..., list[float]]:
    """A reward function from an import path (`mixwise.rewards.exact_match`, `my_pkg.rewards:fn`) or a short
    name of this module (`exact_match`)."""
    if "." not in path and ":" not in path:
        path = f"{__name__}.{path}"
    module, _, attr = path.replace(":", ".").rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import reward function {path!r}: {err}") from None
    if not callable(fn):
        raise ValueError(f"reward function {path!r} is not callable")
    return fn
