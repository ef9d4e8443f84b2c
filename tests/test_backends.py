"""Backends on the tiny random Llama: transformers and vLLM offline, greedy parity, seeds, n, stop,
finish reasons, token counts, log-probs, the factory and content revisions."""
from __future__ import annotations

import shutil

import pytest

from generators.backends.base import Backend, BackendError, Sampling
from generators.backends.factory import BackendConfig, make_backend
from generators.backends.hf import TransformersBackend
from generators.models.registry import model_revision

CONVS = [
    [{"role": "user", "content": "Hello there, how are you today?"}],
    [{"role": "user", "content": "Write a poem about the sea and the sky."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
]


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    be = TransformersBackend(tiny_model_dir, max_batch_size=4)
    be.load()
    yield be
    be.close()


@pytest.fixture(scope="module")
def vllm_backend(tiny_model_dir):
    pytest.importorskip("vllm")
    from generators.backends.vllm_offline import VLLMBackend

    be = VLLMBackend(tiny_model_dir)
    be.load()
    yield be
    be.close()


def test_transformers_shapes_counts_and_greedy(hf):
    assert isinstance(hf, Backend)
    out = hf.generate(CONVS, Sampling(n=3, temperature=0, max_tokens=12))
    assert [len(o) for o in out] == [3, 3, 3]
    for o in out:
        assert len({c.text for c in o}) == 1                   # greedy: n identical samples
        c = o[0]
        assert c.prompt_tokens > 5 and 1 <= c.completion_tokens <= 12
        assert c.finish_reason == ("length" if c.completion_tokens == 12 else "stop")
    tok = hf._tok
    lens = [len(tok(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True))["input_ids"]) for c in CONVS]
    assert [o[0].prompt_tokens for o in out] == lens
    alone = hf.generate(CONVS[1:2], Sampling(temperature=0, max_tokens=12))
    assert alone[0][0].text == out[1][0].text                   # batching/padding does not change greedy text


def test_transformers_seed_reproducible_and_samples_differ(hf):
    s = Sampling(n=4, temperature=1.0, max_tokens=10, seed=7)
    a, b = hf.generate(CONVS, s), hf.generate(CONVS, s)
    assert a == b
    assert len({c.text for c in a[0]}) > 1
    c = hf.generate(CONVS, Sampling(n=4, temperature=1.0, max_tokens=10, seed=8))
    assert c != a


def test_transformers_stop_strings_cut_text(hf):
    free = hf.generate(CONVS[:1], Sampling(n=1, temperature=1.0, max_tokens=30, seed=3))[0][0].text
    assert len(free) > 4
    stop = free[2:4]
    cut = hf.generate(CONVS[:1], Sampling(n=1, temperature=1.0, max_tokens=30, seed=3, stop=(stop,)))[0][0]
    assert stop not in cut.text and free.startswith(cut.text) and cut.finish_reason == "stop"


def test_transformers_logprobs(hf):
    texts = [o[0].text for o in hf.generate(CONVS, Sampling(temperature=0, max_tokens=8))]
    lp = hf.logprobs(CONVS, texts)
    assert len(lp) == 3 and all(v < 0 for v in lp)
    one = hf.logprobs(CONVS[2:], texts[2:])                   # padding in a batch does not change the value
    assert one[0] == pytest.approx(lp[2], abs=1e-3)
    with_eos, without = hf.logprobs(CONVS[:1], texts[:1])[0], hf.logprobs(CONVS[:1], texts[:1], include_eos=False)[0]
    assert with_eos < without < 0
    # The greedy first token is the most likely single-token completion.
    first = hf.generate(CONVS[:1], Sampling(temperature=0, max_tokens=1))[0][0].text
    others = [t for t in ("a", "the", "I", ".") if len(hf._tok(t, add_special_tokens=False)["input_ids"]) == 1]
    assert others
    best = hf.logprobs(CONVS[:1], [first], include_eos=False)[0]
    assert all(best >= v for v in hf.logprobs(CONVS[:1] * len(others), others, include_eos=False))
    with pytest.raises(ValueError, match="conversations"):
        hf.logprobs(CONVS, texts[:1])


def test_transformers_logprobs_match_one_row_full_logits(hf):
    """Batching longest-first and projecting only the completion positions give the sums of a
    plain per-row forward pass over all positions, in the caller's order."""
    import torch

    texts = ["a b c", "the sea is wide and the sky is grey and the wind is cold tonight", "", "ok then"]
    convs = [CONVS[0], CONVS[1], CONVS[2], CONVS[1]]
    model, tok = hf._need()
    want = []
    for conv, text in zip(convs, texts):
        p = hf._prompt_ids(conv)
        c = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p + c])
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=ids).logits.float()[0, :-1], -1)
        want.append(float(logp[len(p) - 1:].gather(-1, ids[0, len(p):, None]).sum()))
    assert hf.logprobs(convs, texts) == pytest.approx(want, abs=1e-3)
    assert hf.logprobs(convs[::-1], texts[::-1]) == pytest.approx(want[::-1], abs=1e-3)


def test_unloaded_and_missing_model_errors(tmp_path):
    with pytest.raises(BackendError, match="load"):
        TransformersBackend(tmp_path).generate(CONVS, Sampling())
    with pytest.raises(BackendError, match="does not exist"):
        TransformersBackend(tmp_path / "nope").load()


def test_revision_is_content_hash(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert model_revision(copy) == model_revision(tiny_model_dir)      # moving a folder keeps it
    cfg = copy / "generation_config.json"
    cfg.write_text(cfg.read_text().replace("}", ', "x": 1}'))
    assert model_revision(copy) != model_revision(tiny_model_dir)


def test_factory(tiny_model_dir, tmp_path):
    be = make_backend(BackendConfig(kind="transformers", model=str(tiny_model_dir)))
    assert isinstance(be, TransformersBackend) and be.model_id == str(tiny_model_dir)
    with pytest.raises(FileNotFoundError, match="does not exist; pass a local folder or one of: smollm2"):
        make_backend(BackendConfig(kind="vllm", model=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="kind"):
        BackendConfig(kind="tgi")
    for name, field in BackendConfig.model_fields.items():
        assert field.description, f"BackendConfig.{name} needs help text"


@pytest.mark.vllm
def test_vllm_greedy_parity_with_transformers(vllm_backend, hf):
    g = Sampling(n=2, temperature=0, max_tokens=16)
    v = vllm_backend.generate(CONVS, g)
    t = hf.generate(CONVS, g)
    assert [[c.text for c in o] for o in v] == [[c.text for c in o] for o in t]
    assert [o[0].prompt_tokens for o in v] == [o[0].prompt_tokens for o in t]
    assert [o[0].completion_tokens for o in v] == [o[0].completion_tokens for o in t]
    assert vllm_backend.revision == hf.revision


@pytest.mark.vllm
def test_vllm_n_samples_and_engine_seed(vllm_backend):
    s = Sampling(n=5, temperature=1.0, max_tokens=8, seed=11)
    a = vllm_backend.generate(CONVS, s)
    assert [len(o) for o in a] == [5, 5, 5]
    assert len({c.text for c in a[0]}) > 1
    assert all(c.completion_tokens == 8 or c.finish_reason == "stop" for o in a for c in o)
    assert vllm_backend.generate(CONVS, s) == a                 # reseeded per call
    assert vllm_backend.generate([], s) == []


def test_kind_table_and_capabilities(tiny_model_dir):
    from typing import get_args

    from generators.backends.factory import KINDS, BackendKind

    assert set(get_args(BackendKind)) == set(KINDS)            # one table: every kind has a row
    caps = {k: (BackendConfig(kind=k, model=str(tiny_model_dir)).remote,
                BackendConfig(kind=k, model=str(tiny_model_dir)).serves_trained_models,
                BackendConfig(kind=k, model=str(tiny_model_dir)).local_model_folder) for k in KINDS}
    assert caps == {"vllm": (False, True, True), "transformers": (False, True, True),
                    "openai": (True, False, False), "vllm_server": (False, True, True)}
    local = BackendConfig(kind="transformers", model=str(tiny_model_dir))
    assert local.in_process and local.managed and local.supports_guided
    assert local.for_model(tiny_model_dir) is local and local.model_folder() == tiny_model_dir
    assert local.for_model("/models/r1").model == "/models/r1"
    endpoint = BackendConfig(kind="openai", model="served")
    assert not endpoint.managed and not endpoint.in_process and endpoint.model_folder() is None
    assert not BackendConfig(kind="openai", guided_fields="none").supports_guided
    with pytest.raises(ValueError, match="cannot serve the newly trained model"):
        endpoint.for_model("/models/r1")


def test_count_tokens_is_the_tokenizers_completion_length_on_both_backends(hf, vllm_backend):
    """The sampling stage fits a repaired answer to max_tokens with count_tokens: no special
    tokens (a completion has no BOS), the same count from the engine's tokenizer as from the model's."""
    text = "THE SKY LOOKS BLUE BECAUSE AIR SCATTERS SUNLIGHT. Short blue waves scatter more."
    want = len(hf._tok(text, add_special_tokens=False)["input_ids"])
    assert hf.count_tokens(text) == want == vllm_backend.count_tokens(text)
    assert hf.count_tokens("") == 0 and hf.count_tokens(text + " " + text) > want
