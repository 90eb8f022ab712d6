"""Answer accuracy, an `evaluate` metric module: the share of generated answers that match their reference.

Configurations (`evaluate.load(path, name)`), the same definitions as the GRPO rewards of `mixwise.rewards`:

* `exact_match`: the SQuAD-normalized answer (lower case, no punctuation, no articles) equals the reference's;
* `numeric_match`: the last number in the answer is within 5% (relative) of the reference's number (ChartQA's
  relaxed accuracy); answers without numbers fall back to exact match;
* `multiple_choice`: the first standalone option letter of the answer equals the reference's letter.

This file is loaded by `evaluate` from its path (it is copied into evaluate's module cache), so it imports mixwise
absolutely.
"""

import datasets
import evaluate

from mixwise.rewards import exact_match, multiple_choice, numeric_match

__all__ = ["AnswerAccuracy"]

SCORERS = {"exact_match": exact_match, "numeric_match": numeric_match, "multiple_choice": multiple_choice}

_DESCRIPTION = "The share of predicted answers that match their reference (exact, numeric or multiple choice)."
_INPUTS = """
Args:
    predictions (list of str): generated answers.
    references (list of str): reference answers.
Returns:
    {config name: float}: the mean score in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class AnswerAccuracy(evaluate.Metric):
    def _info(self):
        if self.config_name not in (*SCORERS, "default"):
            raise ValueError(f"unknown configuration {self.config_name!r}; available: {sorted(SCORERS)}")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        kind = "exact_match" if self.config_name == "default" else self.config_name
        scores = SCORERS[kind](list(predictions), answer=list(references))
        return {kind: float(sum(scores) / len(scores)) if scores else 0.0}
