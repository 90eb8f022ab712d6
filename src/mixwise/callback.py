"""`SelectionCallback`: run a selector with the live model at the start of training and install its plan.

A callback cannot replace the dataloader — it exists before `on_train_begin` — so the trainer must draw through
mixwise's sampler, which reads the plan from the shared [`~mixwise.Mixture`] when an epoch starts. Use
[`mixwise.attach`] to set both up on an existing trainer in one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from transformers import TrainerCallback

from . import distributed
from .fingerprint import model_id_of
from .mixture import Mixture
from .models import eval_mode
from .plan import MANIFEST_NAME, Plan
from .selectors import FixedWeights, RandomSubset, SelectionContext, Selector, Uniform

logger = logging.getLogger(__name__)


def uses_model(selector: Any) -> bool:
    """Whether `selector` scores with the model (its `uses_model` attribute; the spine's baselines do not)."""
    return bool(getattr(selector, "uses_model", not isinstance(selector, FixedWeights | RandomSubset | Uniform)))


class SelectionCallback(TrainerCallback):
    """Compute the selection at train begin with the live model, install it, log it and write `selection.json`.

    * Every rank calls the selector (a selector splits its scoring work with
      [`mixwise.distributed.map_across_ranks`]); the main process's plan is then broadcast, so all ranks install
      the identical plan.
    * A model sharded by FSDP2 or DeepSpeed ZeRO-3 is handed to the selector as an unsharded replica gathered
      from the shards ([`mixwise.distributed.unsharded`]: the full parameters on every rank for the duration of the
      selection, freed before the first step), so that the selection equals an unsharded run's. Selectors that do
      not use the model (`uses_model = False`; the spine's `Uniform`, `FixedWeights` and `RandomSubset`) get the live
      model as it is and nothing is gathered. FSDP1 is refused with a clear error on every rank.
    * On resume from a checkpoint that holds a `selection.json` (the callback writes one into every checkpoint),
      that plan is reused instead of selecting again.
    * Weights and counts are logged through the trainer's own loggers (`report_to`) as `mixwise/weight/<source>`
      and `mixwise/count/<source>`.

    Args:
        mixture: the mixture the trainer draws from.
        selector: any object with `select(context) -> Plan`.
        targets: named target datasets passed to the selector.
        model_id: identifier recorded in the manifest (defaults to the model's `name_or_path`).
    """

    def __init__(
        self,
        mixture: Mixture,
        selector: Selector,
        targets: dict[str, Any] | None = None,
        model_id: str | None = None,
    ):
        self.mixture = mixture
        self.selector = selector
        self.targets = dict(targets or {})
        self.model_id = model_id
        self.trainer = None  # set by `mixwise.attach`, used to log through the trainer's loggers
        self.plan: Plan | None = None

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        seed = args.data_seed if args.data_seed is not None else args.seed
        plan = None
        if state.global_step > 0:
            saved = self._saved_plan(args, state)
            if saved is not None:
                plan = Plan.load(saved)
                logger.info("mixwise: resumed the selection from %s", saved)
        if plan is None:
            model_id = self.model_id or model_id_of(model)
            gather = model is not None and uses_model(self.selector) and distributed.sharding(model) is not None
            with distributed.unsharded(model) if gather else contextlib.nullcontext(model) as live:
                context = SelectionContext(
                    mixture=self.mixture,
                    seed=seed,
                    model=live,
                    processing_class=processing_class,
                    targets=self.targets,
                    model_id=model_id,
                )
                with eval_mode(live):
                    plan = self.selector.select(context)
        plan = distributed.broadcast(plan)
        self.mixture.set_plan(plan)
        self.plan = plan
        if state.is_world_process_zero:
            plan.save(args.output_dir)
        logs = {f"mixwise/weight/{n}": s.weight for n, s in plan.sources.items()}
        logs.update({f"mixwise/count/{n}": float(s.count) for n, s in plan.sources.items()})
        if self.trainer is not None:
            self.trainer.log(logs)
        else:
            logger.info("mixwise selection (%s): %s", plan.method, logs)
        return control

    def _saved_plan(self, args, state) -> str | None:
        """The `selection.json` of the checkpoint being resumed, if there is one."""
        candidates = [
            getattr(self.trainer, "mixwise_resume_from", None),
            args.resume_from_checkpoint if isinstance(args.resume_from_checkpoint, str) else None,
            os.path.join(args.output_dir, f"checkpoint-{state.global_step}"),
        ]
        for ckpt in candidates:
            if ckpt and os.path.exists(os.path.join(ckpt, MANIFEST_NAME)):
                return os.path.join(ckpt, MANIFEST_NAME)
        return None

    def on_save(self, args, state, control, **kwargs):
        if self.plan is not None and state.is_world_process_zero:
            ckpt = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(ckpt):
                self.plan.save(os.path.join(ckpt, MANIFEST_NAME))
        return control


__all__ = ["SelectionCallback", "uses_model"]
