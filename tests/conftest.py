"""Session-scoped fixtures for the offline model zoo (:mod:`mixwise.testing`).

Models are built lazily, once per test session; tests that train should work on a copy (``copy.deepcopy``) or
build their own with ``mixwise.testing.build_tiny_*`` so that they do not change the shared weights.
"""

from __future__ import annotations

import pytest


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
