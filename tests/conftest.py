"""Shared fixtures: tiny random Llama models with a real tokenizer, a fresh store per test, and
an isolated, offline environment (no hub, Prefect home in a temp dir, analytics off)."""
from __future__ import annotations

import os
import tempfile

import pytest

_HOME = tempfile.mkdtemp(prefix="prefmill-test-")
os.environ.setdefault("PREFECT_HOME", os.path.join(_HOME, "prefect"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("PREFMILL_CACHE", os.path.join(_HOME, "cache"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random causal Llama (float32) with a trained BPE tokenizer and a ChatML template."""
    from generators.models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir_b(tmp_path_factory):
    """A second tiny causal Llama with other weights (a different policy / judge)."""
    from generators.models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-b"), seed=1)


@pytest.fixture(scope="session")
def tiny_reward_dir(tmp_path_factory):
    """A tiny random LlamaForSequenceClassification with one output (scalar reward model)."""
    from generators.models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-rm"), seed=2, num_labels=1)


@pytest.fixture(scope="session")
def tiny_multi_reward_dir(tmp_path_factory):
    """A tiny random LlamaForSequenceClassification with five heads (HelpSteer attributes)."""
    from generators.models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-mrm"), seed=3, num_labels=5)


@pytest.fixture
def store(tmp_path):
    from pipelines.store import Store

    return Store(tmp_path / "store")
