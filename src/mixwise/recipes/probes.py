"""`ProbeLossCallback`: the answer-token loss on small fixed probe sets (one per source or target), logged as
`probe_loss/<name>` every `logging_steps`, so the run report can draw a loss curve per source / target."""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from ..models import eval_mode
from ..signals.encoding import encode_rows, per_sample_nll, to_model


class ProbeLossCallback(TrainerCallback):
    """Mean per-sample answer NLL on each probe set, with the live model, at every logging step.

    Every rank computes the same values on the full (small) probe sets, so the callback is safe with DDP and
    does not need a collective. Pass `trainer` to log through its loggers (`report_to`).
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

    def on_step_end(self, args, state, control, model=None, **kwargs):
        steps = args.logging_steps if args.logging_steps >= 1 else 1
        if model is not None and self.trainer is not None and state.global_step % int(steps) == 0:
            self.trainer.log(self.losses(model))
        return control
