"""Session-scoped fixtures for the offline model zoo (:mod:`mixwise.testing`).

Models are built lazily, once per test session; tests that train should work on a copy (``copy.deepcopy``) or
build their own with ``mixwise.testing.build_tiny_*`` so that they do not change the shared weights.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def mixwise_cache(tmp_path_factory):
    """mixwise's own caches (validation results) in the session's temporary directory, not in the user's home;
    subprocesses inherit it."""
    old = os.environ.get("MIXWISE_CACHE")
    os.environ["MIXWISE_CACHE"] = str(tmp_path_factory.mktemp("mixwise-cache"))
    yield os.environ["MIXWISE_CACHE"]
    if old is None:
        os.environ.pop("MIXWISE_CACHE", None)
    else:
        os.environ["MIXWISE_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_llava():
    """``(LlavaForConditionalGeneration, LlavaProcessor)`` from ``build_tiny_llava(seed=0)``."""
    from mixwise.testing import build_tiny_llava

    return build_tiny_llava(seed=0)


@pytest.fixture(scope="session")
def tiny_llava_path(tmp_path_factory):
    """Directory holding ``save_tiny_model("llava", ..., seed=0)`` (loadable with the Auto classes)."""
    from mixwise.testing import save_tiny_model

    return save_tiny_model("llava", tmp_path_factory.mktemp("zoo") / "tiny-llava", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2_vl():
    """``(Qwen2VLForConditionalGeneration, Qwen2VLImageOnlyProcessor)`` from ``build_tiny_qwen2_vl(seed=0)``."""
    from mixwise.testing import build_tiny_qwen2_vl

    return build_tiny_qwen2_vl(seed=0)


@pytest.fixture(scope="session")
def tiny_llama():
    """``(LlamaForCausalLM, PreTrainedTokenizerFast)`` from ``build_tiny_llama(seed=0)``."""
    from mixwise.testing import build_tiny_llama

    return build_tiny_llama(seed=0)


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory):
    """Directory holding ``save_tiny_model("llama", ..., seed=0)`` (loadable with the Auto classes)."""
    from mixwise.testing import save_tiny_model

    return save_tiny_model("llama", tmp_path_factory.mktemp("zoo") / "tiny-llama", seed=0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread; two threads on a busy 2-core machine spin and crawl. Modules that time
    out otherwise use it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def json_llava_path(tmp_path_factory):
    """Directory of the tiny LLaVA taught to answer with MM-GEN's JSON (`tests/scripts/mmgen_models.py`)."""
    import sys

    from helpers import SCRIPTS

    sys.path.insert(0, str(SCRIPTS))
    import mmgen_models

    return mmgen_models.teach_json_llava(tmp_path_factory.mktemp("json-llava"))
