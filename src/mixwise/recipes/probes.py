"""`ProbeLossCallback`: the answer-token loss on small fixed probe sets (one per source or target), logged as
`probe_loss/<name>` at every logging step, so the run report can draw a loss curve per source / target.

The values are logged right after the trainer's own training log (from `on_log`), as a second entry for the same
step. Logging from `on_step_end` instead would cancel the trainer's log of that step: `Trainer.log` resets
`control.should_log`, so `loss`, `grad_norm` and `learning_rate` would never reach `trainer_state.json` or the
trackers."""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from ..models import eval_mode
from ..signals.encoding import encode_rows, per_sample_nll, to_model


class ProbeLossCallback(TrainerCallback):
    """Mean per-sample answer NLL on each probe set, with the live model, at every logging step.

    Every rank computes the same values on the full (small) probe sets, so the callback is safe with DDP and
    does not need a collective. Pass `trainer` to log through its loggers (`report_to`); values are logged after
    each of the trainer's training logs.
    """

    def __init__(self, probes: dict[str, Any], processing_class: Any, trainer=None, batch_size: int = 8):
        self.probes = {n: [ds[i] for i in range(len(ds))] for n, ds in probes.items()}
        self.processing_class = processing_class
        self.trainer = trainer
        self.batch_size = batch_size

    @torch.no_grad()
    def losses(self, model) -> dict[str, float]:
        out = {}
        with eval_mode(model):
            for name, rows in self.probes.items():
                values = []
                for start in range(0, len(rows), self.batch_size):
                    batch = to_model(
                        model,
                        encode_rows(
                            rows[start : start + self.batch_size],
                            self.processing_class,
                            source=name,
                            start_index=start,
                        ),
                    )
                    labels = batch.pop("labels")
                    values.append(per_sample_nll(model(**batch).logits, labels))
                out[f"probe_loss/{name}"] = float(torch.cat(values).mean())
        return out

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if model is not None and self.trainer is not None and is_training_log(logs):
            log_extra(self.trainer, self.losses(model))
        return control


def log_extra(trainer, logs: dict[str, float]) -> None:
    """Log `logs` as an entry of their own, through the trainer's loggers: `transformers.Trainer.log`, not a TRL
    trainer's override, which would add its averaged step metrics (entropy, token accuracy, ...) a second time."""
    from transformers import Trainer

    Trainer.log(trainer, logs)


def is_training_log(logs: dict[str, Any] | None) -> bool:
    """Whether `logs` is the trainer's own log of a training step (not an evaluation, the end-of-training summary
    or a callback's entry)."""
    return bool(logs) and "loss" in logs and "train_runtime" not in logs


__all__ = ["ProbeLossCallback", "is_training_log", "log_extra"]
