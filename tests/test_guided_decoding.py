"""Constrained decoding and top log-probs on the tiny model (transformers mask, vLLM structured
outputs) and on the OpenAI wire format (a stub that records bodies and answers with log-probs):
a guided choice always returns a choice, log-probs are real log-probabilities, vLLM and
transformers agree on greedy guided output, and old sample keys do not change."""
from __future__ import annotations

import math
import re

import pytest

from generators.backends.base import BackendError, Sampling, merge_logprob
from generators.backends.hf import TransformersBackend
from generators.backends.openai_http import OpenAIBackend
from local_http import JSONHandler, LocalServer

SCORES = ("1", "2", "3", "4", "5")
CONVS = [[{"role": "user", "content": f"Rate answer {i} from 1 to 5."}] for i in range(6)]


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    be = TransformersBackend(tiny_model_dir, max_batch_size=8)
    be.load()
    yield be
    be.close()


@pytest.fixture(scope="module")
def vllm_be(tiny_model_dir):
    pytest.importorskip("vllm")
    from generators.backends.vllm_offline import VLLMBackend

    be = VLLMBackend(tiny_model_dir, kv_cache_gib=0.25)
    be.load()
    yield be
    be.close()


def test_sampling_fields_validate_and_keep_old_keys():
    assert Sampling(n=4, temperature=0.8, stop=("x",)).key_params() == {
        "temperature": 0.8, "top_p": 1.0, "max_tokens": 256, "stop": ["x"]}      # as before these fields existed
    kp = Sampling(guided_choice=SCORES, top_logprobs=5).key_params()
    assert kp["guided_choice"] == list(SCORES) and kp["top_logprobs"] == 5 and "guided_regex" not in kp
    assert Sampling(guided_regex="[0-9]").key_params()["guided_regex"] == "[0-9]"
    assert Sampling(guided_choice=["1", "2"]) == Sampling(guided_choice=("1", "2"))   # lists from YAML
    assert hash(Sampling(guided_choice=["1", "2"])) == hash(Sampling(guided_choice=("1", "2")))
    for bad, msg in [(dict(guided_choice=SCORES, guided_regex="1"), "use one of them"),
                     (dict(guided_choice=("1", "")), "non-empty"), (dict(guided_choice="12"), "tuple"),
                     (dict(guided_regex="(["), "not a valid regex"), (dict(top_logprobs=21), "0..20")]:
        with pytest.raises(ValueError, match=msg):
            Sampling(**bad)


def test_transformers_guided_choice_and_real_logprobs(hf):
    outs = hf.generate(CONVS, Sampling(n=6, temperature=1.5, max_tokens=4, guided_choice=SCORES, top_logprobs=5,
                                       seed=1))
    texts = [c.text for o in outs for c in o]
    assert set(texts) <= set(SCORES) and len(set(texts)) > 1          # constrained, still sampled
    for c in (o[0] for o in outs):
        first = c.token_logprobs[0]
        assert set(first) == set(SCORES)                              # the mask leaves only the choices
        assert sum(math.exp(v) for v in first.values()) == pytest.approx(1.0, abs=1e-4)
        assert c.tokens[0] == c.text and c.logprob == pytest.approx(sum(d[t] for d, t in zip(c.token_logprobs, c.tokens)))
    # Unconstrained, the reported values are the model's full-vocabulary log-softmax.
    import torch

    free = hf.generate(CONVS[:1], Sampling(temperature=0, max_tokens=1, top_logprobs=20))[0][0]
    tok, model = hf._tok, hf._model
    ids = torch.tensor([hf._prompt_ids(CONVS[0])])
    with torch.inference_mode():
        full = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
    assert float(torch.logsumexp(full, -1)) == pytest.approx(0.0, abs=1e-5)     # sums to 1 over the vocab
    top = torch.topk(full, 20)
    want: dict[str, float] = {}
    for v, i in zip(top.values.tolist(), top.indices.tolist()):
        merge_logprob(want, tok.decode([i]), v)      # byte tokens that decode alike ("\ufffd") add up
    assert free.token_logprobs[0] == pytest.approx(want, abs=1e-4)
    assert free.tokens[0] == tok.decode([int(full.argmax())])                 # greedy takes the top token


def test_transformers_guided_regex(hf):
    outs = hf.generate(CONVS[:3], Sampling(n=3, temperature=1.0, max_tokens=12, guided_regex=r"(yes|no), [0-9]{2}"))
    assert all(re.fullmatch(r"(yes|no), [0-9]{2}", c.text) for o in outs for c in o)


@pytest.mark.vllm
def test_vllm_guided_choice_matches_transformers(vllm_be, hf):
    sampled = vllm_be.generate(CONVS, Sampling(n=6, temperature=1.5, max_tokens=4, guided_choice=SCORES, seed=2))
    assert {c.text for o in sampled for c in o} <= set(SCORES)
    g = Sampling(temperature=0, max_tokens=4, guided_choice=SCORES, top_logprobs=5)
    v, t = vllm_be.generate(CONVS, g), hf.generate(CONVS, g)
    assert [o[0].text for o in v] == [o[0].text for o in t]
    for a, b in zip(v, t):
        assert a[0].token_logprobs[0] == pytest.approx(b[0].token_logprobs[0], abs=2e-3)
        assert sum(math.exp(x) for x in a[0].token_logprobs[0].values()) == pytest.approx(1.0, abs=1e-3)
    r = Sampling(temperature=0, max_tokens=8, guided_regex=r"[a-z]{3} [0-9]")
    assert [o[0].text for o in vllm_be.generate(CONVS[:3], r)] == [o[0].text for o in hf.generate(CONVS[:3], r)]
    assert all(re.fullmatch(r"[a-z]{3} [0-9]", o[0].text) for o in vllm_be.generate(CONVS[:3], r))


class WireServer:
    """Records request bodies; answers with log-probs and the text `reply`."""

    def __init__(self, reply: str):
        self.bodies: list[dict] = []
        outer = self

        class H(JSONHandler):
            def do_GET(self):
                self._send(200, {"data": [{"id": "m"}]})

            def do_POST(self):
                outer.bodies.append(self._body())
                lp = {"content": [{"token": "4", "logprob": -0.2, "top_logprobs": [
                    {"token": "4", "logprob": -0.2}, {"token": "3", "logprob": -1.8}]}]}
                self._send(200, {"choices": [{"index": 0, "message": {"content": reply}, "finish_reason": "stop",
                                              "logprobs": lp}], "usage": {"prompt_tokens": 5, "completion_tokens": 1}})

        self._srv = LocalServer(H)
        self.url, self.close = self._srv.url, self._srv.close


@pytest.mark.parametrize("fields,expect", [
    ("structured_outputs", {"structured_outputs": {"choice": list(SCORES)}}),
    ("guided", {"guided_choice": list(SCORES)}),
])
def test_openai_guided_fields_and_logprobs(fields, expect):
    srv = WireServer("4")
    try:
        be = OpenAIBackend("m", base_url=srv.url, guided_fields=fields)
        c = be.generate(CONVS[:1], Sampling(temperature=0, guided_choice=SCORES, top_logprobs=2))[0][0]
        body = srv.bodies[0]
        assert {k: body[k] for k in expect} == expect and body["logprobs"] is True and body["top_logprobs"] == 2
        assert c.text == "4" and c.tokens == ("4",) and c.token_logprobs == ({"4": -0.2, "3": -1.8},)
        assert c.logprob == -0.2 and c.completion_tokens == 1
        be.generate(CONVS[:1], Sampling(guided_regex="[0-9]"))
        key = "structured_outputs" if fields == "structured_outputs" else "guided_regex"
        assert srv.bodies[1][key] == ({"regex": "[0-9]"} if key == "structured_outputs" else "[0-9]")
        assert "logprobs" not in srv.bodies[1]
    finally:
        srv.close()


def test_openai_response_format_unwraps_the_answer():
    srv = WireServer('{"answer": "4"}')
    try:
        be = OpenAIBackend("m", base_url=srv.url, guided_fields="response_format")
        c = be.generate(CONVS[:1], Sampling(guided_choice=SCORES))[0][0]
        schema = srv.bodies[0]["response_format"]["json_schema"]["schema"]
        assert schema["properties"]["answer"]["enum"] == list(SCORES) and c.text == "4" and c.finish_reason == "stop"
    finally:
        srv.close()
    bad = WireServer("four")
    try:
        c = OpenAIBackend("m", base_url=bad.url, guided_fields="response_format").generate(
            CONVS[:1], Sampling(guided_choice=SCORES))[0][0]
        assert c.text == "four" and c.finish_reason == "error"        # not JSON: kept raw, flagged
        with pytest.raises(BackendError, match="guided_fields='none'"):
            OpenAIBackend("m", base_url=bad.url, guided_fields="none").generate(CONVS[:1], Sampling(guided_regex="x"))
    finally:
        bad.close()
