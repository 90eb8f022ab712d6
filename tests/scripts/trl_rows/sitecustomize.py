"""Loaded at interpreter start-up when this folder is on PYTHONPATH (the `trl sft` CLI test): with
`MIXWISE_TRL_ROWS=path`, every index the training sampler of a transformers / TRL trainer yields is appended to
`path` (one JSON list per process), so the test can count the rows TRL's own CLI trained on."""

import os

if os.environ.get("MIXWISE_TRL_ROWS"):
    import atexit
    import json

    import transformers

    seen = []

    class Recording:
        def __init__(self, sampler):
            self.sampler = sampler

        def __iter__(self):
            for index in self.sampler:
                seen.append(int(index))
                yield index

        def __len__(self):
            return len(self.sampler)

        def set_epoch(self, epoch):
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(epoch)

    def patch(cls):
        original = cls._get_train_sampler

        def _get_train_sampler(self, *args, **kwargs):
            sampler = original(self, *args, **kwargs)
            return Recording(sampler) if sampler is not None else None

        cls._get_train_sampler = _get_train_sampler

    patch(transformers.Trainer)
    try:
        from trl.trainer.grpo_trainer import GRPOTrainer

        patch(GRPOTrainer)
    except ImportError:
        pass

    def write():
        if seen:
            with open(os.environ["MIXWISE_TRL_ROWS"], "a") as f:
                f.write(json.dumps(seen) + "\n")

    atexit.register(write)
