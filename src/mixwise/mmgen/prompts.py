"""MM-GEN step 2a: generation prompts and items (one per candidate image and prompt variant).

**Prompts** ([`build_prompt`], [`make_items`]): the task description, the subgroup's name, `num_examples`
question–answer pairs of reference rows of that subgroup (drawn with a seed derived from the image id, subgroup
and variant, so a restart rebuilds the same prompt), and the instruction. The examples are text only: many
endpoints take one image per request. The **prompt id** is `p<variant>-<sha1 of the prompt text>`, so a
changed task description or example draw is a new prompt, never confused with an old one.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets

from ..fingerprint import stable_seed
from ..sources import extract_fields
from .partition import Partition, Retrieval

DEFAULT_TASK = "Answer questions about the image."


def build_prompt(task_description: str, subgroup: str, examples: Sequence[tuple[str, str]], n_pairs: int) -> str:
    """The MM-GEN generation prompt: task, subgroup, in-context examples, and the request for N JSON pairs."""
    lines = [f"Task: {task_description.strip()}", f"Image type: {subgroup}"]
    if examples:
        lines.append("Examples of question-answer pairs for images of this type:")
        lines += [json.dumps({"Q": q, "A": a}, ensure_ascii=False) for q, a in examples]
    lines.append(
        f"Write exactly {n_pairs} diverse question-answer pairs about this image in the style of the examples. "
        f'Reply with only a JSON array of {n_pairs} objects with keys "Q" and "A".'
    )
    return "\n".join(lines)


@dataclass
class GenerationItem:
    """One generation request: annotate `image_id` (row `image_index` of the pool) for `subgroup` with `prompt`."""

    image_index: int
    image_id: str
    subgroup: str
    prompt_id: str
    prompt: str
    n_pairs: int
    variant: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.image_id, self.prompt_id)


def prompt_id(prompt: str, variant: int = 0) -> str:
    return f"p{variant}-{hashlib.sha1(prompt.encode()).hexdigest()[:12]}"


def make_items(
    retrieval: Retrieval,
    partition: Partition,
    reference: datasets.Dataset | Sequence[Mapping[str, Any]],
    task_description: str = DEFAULT_TASK,
    n_pairs: int = 3,
    num_examples: int = 3,
    seed: int = 0,
    source: str = "reference",
) -> list[GenerationItem]:
    """One [`GenerationItem`] per retrieved candidate; in-context examples from the candidate's own subgroup."""
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    qa_cache: dict[int, tuple[str, str]] = {}

    def qa(i: int) -> tuple[str, str]:
        if i not in qa_cache:
            fields = extract_fields(reference[i], source, i)
            qa_cache[i] = (fields.question.strip(), fields.answer.strip())
        return qa_cache[i]

    items = []
    for name, candidates in retrieval.candidates.items():
        members = partition[name].members
        for c in candidates:
            k = min(num_examples, len(members))
            rng = random.Random(int(stable_seed(seed, c.image_id, name, c.variant).generate_state(1)[0]))
            examples = [qa(i) for i in sorted(rng.sample(members, k))] if k else []
            prompt = build_prompt(task_description, name, examples, n_pairs)
            items.append(
                GenerationItem(
                    c.image_index, c.image_id, name, prompt_id(prompt, c.variant), prompt, n_pairs, c.variant
                )
            )
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):  # cannot happen with exclusive retrieval; guard the log's invariant anyway
        raise ValueError("two generation items share an (image id, prompt id) key")
    return items
