"""Loading a model by path, and running a live model in evaluation mode for a while.

One rule decides what a directory holds: a config with a `vision_config` is a vision-language model
(`AutoModelForImageTextToText`), anything else a causal language model (`AutoModelForCausalLM`). Its processing
class is the directory's processor, or its tokenizer when it has none.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["default_device", "eval_mode", "is_vision_language", "load_model", "load_processing_class"]


def default_device() -> str:
    """`"cuda"` when a GPU is visible, else `"cpu"`."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def is_vision_language(config: Any) -> bool:
    """Whether a transformers config describes a vision-language model (it has a `vision_config`)."""
    return getattr(config, "vision_config", None) is not None


def load_processing_class(path: str | os.PathLike) -> Any:
    """The processor saved in `path`, or its tokenizer when it has no processor (text-only models)."""
    import transformers

    path = os.fspath(path)
    try:
        return transformers.AutoProcessor.from_pretrained(path)
    except (ValueError, KeyError, OSError, TypeError):
        pass
    from . import testing  # noqa: F401 - registers the zoo's image-only Qwen2-VL processor

    try:
        return transformers.AutoProcessor.from_pretrained(path)
    except (ValueError, KeyError, OSError, TypeError):
        return transformers.AutoTokenizer.from_pretrained(path)


def load_model(
    path: str | os.PathLike, device: str | None = None, dtype: Any = None, **kwargs: Any
) -> tuple[Any, Any]:
    """`(model, processing_class)` from a local directory or hub id, in evaluation mode.

    Args:
        path: the model's directory (or hub id).
        device: move the model there (`None`: leave it where `from_pretrained` put it).
        dtype: `from_pretrained`'s `dtype` (`None`: the checkpoint's).
        kwargs: further `from_pretrained` keywords (e.g. `attn_implementation`).
    """
    import transformers

    path = os.fspath(path)
    if not os.path.exists(path) and (os.path.isabs(path) or path.startswith(".")):
        raise FileNotFoundError(f"model directory {path!r} does not exist")
    config = transformers.AutoConfig.from_pretrained(path)
    cls = transformers.AutoModelForImageTextToText if is_vision_language(config) else transformers.AutoModelForCausalLM
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = cls.from_pretrained(path, **kwargs)
    if device is not None:
        model = model.to(device)
    return model.eval(), load_processing_class(path)


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[Any]:
    """Run the block with `model` in evaluation mode (no dropout) and restore training mode afterwards if it was
    on. `None` passes through."""
    was_training = bool(getattr(model, "training", False))
    if model is not None:
        model.eval()
    try:
        yield model
    finally:
        if model is not None and was_training:
            model.train()
