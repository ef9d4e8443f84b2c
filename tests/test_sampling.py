"""The sampling stage on the tiny model: keys, n per prompt, record-level resume after an
interrupt, larger-n reruns, SPIN reference rows, progress, and vLLM through the same stage."""
from __future__ import annotations

import polars as pl
import pytest

from generators.backends.hf import TransformersBackend
from pipelines import keys
from pipelines.prompts import prompt_row, prompts_frame
from pipelines.quarantine import QUARANTINE_TABLE
from pipelines.sampling import SamplingStageConfig, sample_stage
from pipelines.stage import lineage_of

TEXTS = ["Describe a rainy morning.", "Give advice to a cook.", "Explain rainbows.", "Write a haiku.",
         "Name a river.", "Say hello."]


class Counting:
    """The real transformers backend, counting the conversations it is asked to continue."""

    def __init__(self, inner):
        self.inner, self.asked = inner, []

    model_id = property(lambda self: self.inner.model_id)
    revision = property(lambda self: self.inner.revision)

    def load(self):
        self.inner.load()

    def close(self):
        self.inner.close()

    def generate(self, conversations, sampling):
        self.asked.append((len(conversations), sampling.n))
        return self.inner.generate(conversations, sampling)


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    be = TransformersBackend(tiny_model_dir, max_batch_size=16)
    be.load()
    return be


def _prompts(store, *, refs: bool = False, name: str = "prompts"):
    rows = [prompt_row([{"role": "user", "content": t}], task_type="open_qa", source="test", heldout_fraction=0.0,
                       reference=(f"gold answer {i}" if refs and i % 2 == 0 else None)) for i, t in enumerate(TEXTS)]
    store.append(name, prompts_frame(rows), kind="prompts")
    return rows


def test_best_of_n_keys_and_lineage(store, backend):
    rows = _prompts(store)
    cfg = SamplingStageConfig(n=3, max_tokens=6, batch_size=4, temperature=1.0)
    seen = []
    ref = sample_stage(store, backend, cfg, prompts="prompts", output="samples", progress=lambda d, t: seen.append((d, t)))
    df = store.read(ref)
    assert df.height == 18 and df["sample_id"].n_unique() == 18
    assert sorted(df.group_by("prompt_id").len()["len"].to_list()) == [3] * 6
    r = df.filter((pl.col("prompt_id") == rows[0]["prompt_id"]) & (pl.col("sample_index") == 2)).row(0, named=True)
    assert r["sample_id"] == keys.sample_id(rows[0]["prompt_id"], policy=backend.model_id, revision=backend.revision,
                                            sampling=cfg.sampling().key_params(), seed=0, index=2)
    assert (df["completion_tokens"] <= 6).all() and not df["is_reference"].any()
    assert seen[0] == (0, 18) and seen[-1] == (18, 18)
    rec = lineage_of(store, "samples").row(-1, named=True)
    assert backend.revision in rec["models"] and '"n": 3' in rec["config"] and "batch_size" not in rec["config"]
    # Same config again: the completed version is reused, nothing is generated.
    counting = Counting(backend)
    assert sample_stage(store, counting, cfg, prompts="prompts", output="samples") == ref and counting.asked == []


def test_greedy_adds_the_policys_greedy_answer_keyed_apart(store, backend):
    rows = _prompts(store)
    cfg = SamplingStageConfig(n=2, max_tokens=6, batch_size=4, temperature=1.0, greedy=True)
    df = store.read(sample_stage(store, backend, cfg, prompts="prompts", output="g"))
    assert df.height == 18 and df["sample_id"].n_unique() == 18
    g = df.filter(pl.col("sample_index") == 2).sort("prompt_id")
    assert g.height == 6 and all('"temperature": 0.0' in x for x in g["sampling"])
    assert g.filter(pl.col("prompt_id") == rows[0]["prompt_id"])["sample_id"][0] == keys.sample_id(
        rows[0]["prompt_id"], policy=backend.model_id, revision=backend.revision,
        sampling=cfg.greedy_sampling().key_params(), seed=0, index=2)
    # the same answers as greedy sampling on its own
    alone = store.read(sample_stage(store, backend, SamplingStageConfig(n=1, max_tokens=6, temperature=0.0),
                                    prompts="prompts", output="alone")).sort("prompt_id")
    assert g["completion"].to_list() == alone["completion"].to_list()
    # the greedy answer enters the lineage config; a rerun generates nothing
    assert '"greedy": true' in lineage_of(store, "g").row(-1, named=True)["config"]
    counting = Counting(backend)
    sample_stage(store, counting, cfg, prompts="prompts", output="g")
    assert counting.asked == []
    with pytest.raises(ValueError, match="greedy works with mode best_of_n"):
        SamplingStageConfig(mode="sppo", greedy=True)
    with pytest.raises(ValueError, match="greedy already"):
        SamplingStageConfig(temperature=0.0, greedy=True)


def test_interrupt_then_resume_recomputes_nothing(store, backend):
    _prompts(store)
    cfg = SamplingStageConfig(n=2, max_tokens=5, batch_size=2, temperature=1.0)
    calls = []

    def stop_after_two(done, total):
        calls.append(done)
        if len(calls) == 3:          # initial report + two committed batches
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sample_stage(store, backend, cfg, output="s", progress=stop_after_two)
    assert store.read("s").height == 8
    counting = Counting(backend)
    ref = sample_stage(store, counting, cfg, output="s")
    df = store.read(ref)
    assert df.height == 12 and df["sample_id"].n_unique() == 12
    assert sum(n for n, _ in counting.asked) == 2                     # only the 2 prompts left
    # Larger n: only the missing indices are sampled, existing rows are kept unchanged.
    counting.asked.clear()
    bigger = SamplingStageConfig(n=3, max_tokens=5, batch_size=4, temperature=1.0)
    ref3 = sample_stage(store, counting, bigger, output="s")
    df3 = store.read(ref3)
    assert df3.height == 18 and counting.asked == [(4, 1), (2, 1)]
    assert df3.join(df, on="sample_id").filter(pl.col("completion") != pl.col("completion_right")).is_empty()
    # Another batch size does not change any key: nothing to do.
    counting.asked.clear()
    sample_stage(store, counting, SamplingStageConfig(n=3, max_tokens=5, batch_size=5, temperature=1.0), output="s")
    assert counting.asked == []


def test_spin_writes_gold_rows_and_quarantines_prompts_without_reference(store, backend):
    rows = _prompts(store, refs=True)
    ref = sample_stage(store, backend, SamplingStageConfig(mode="spin", n=1, max_tokens=5), output="spin")
    df = store.read(ref)
    gold = df.filter(pl.col("is_reference"))
    assert gold.height == 3 and df.filter(~pl.col("is_reference")).height == 3
    assert sorted(gold["completion"].to_list()) == ["gold answer 0", "gold answer 2", "gold answer 4"]
    assert set(gold["prompt_id"]) == set(df.filter(~pl.col("is_reference"))["prompt_id"])
    q = store.read(QUARANTINE_TABLE).filter(pl.col("stage") == "sample")
    assert q.height == 3 and set(q["reason"]) == {"spin_needs_reference"}
    assert set(q["row_key"]) == {r["prompt_id"] for r in rows if r["reference"] is None}


def test_split_selection_and_unloaded_backend(store, tiny_model_dir):
    _prompts(store)
    with pytest.raises(ValueError, match="load"):
        sample_stage(store, TransformersBackend(tiny_model_dir), SamplingStageConfig(), output="x")
    with pytest.raises(ValueError, match="mode"):
        SamplingStageConfig(mode="rso")


@pytest.mark.vllm
def test_vllm_backend_through_stage(store, tiny_model_dir):
    pytest.importorskip("vllm")
    from generators.backends.vllm_offline import VLLMBackend

    _prompts(store)
    be = VLLMBackend(tiny_model_dir)
    be.load()
    try:
        ref = sample_stage(store, be, SamplingStageConfig(mode="sppo", n=4, max_tokens=6, batch_size=3), output="sppo")
    finally:
        be.close()
    df = store.read(ref)
    assert df.height == 24 and df.group_by("prompt_id").len()["len"].to_list() == [4] * 6
    assert df.group_by("prompt_id").agg(pl.col("completion").n_unique())["completion"].max() > 1
