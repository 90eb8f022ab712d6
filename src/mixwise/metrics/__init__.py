"""Metrics for `evaluate`, shipped as evaluate modules inside the package (`evaluate.load` reads a module from a local
file, so they work offline).

[`answer_accuracy`](answer_accuracy.py) scores generated answers against reference answers with the same
definitions as the GRPO rewards of [`mixwise.rewards`] — exact match (SQuAD normalization), numeric match (the last
number within 5% relative tolerance, ChartQA's relaxed accuracy) and multiple choice (the option letter):

```python
import evaluate
from mixwise.metrics import ANSWER_ACCURACY

metric = evaluate.load(ANSWER_ACCURACY, "numeric_match")
metric.compute(predictions=["about 41"], references=["42"])   # {"numeric_match": 1.0}
```
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["ANSWER_ACCURACY", "METRIC_KINDS", "load_answer_metric"]

ANSWER_ACCURACY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "answer_accuracy.py")
METRIC_KINDS = ("exact_match", "numeric_match", "multiple_choice")


def load_answer_metric(kind: str = "exact_match") -> Any:
    """`evaluate.load` of the shipped answer-accuracy module for `kind` (kept in memory: no cache files, so every
    process of a distributed run can hold its own)."""
    if kind not in METRIC_KINDS:
        raise ValueError(f"unknown answer metric {kind!r}; available: {list(METRIC_KINDS)}")
    import evaluate

    return evaluate.load(ANSWER_ACCURACY, kind, keep_in_memory=True)
