"""The PRM scorer (generators/scorers/prm.py) on a tiny random AutoModelForTokenClassification:
labels read at the last token of each step + separator (TRL's PRMTrainer layout), min /
product / last aggregation of P(good), batch independence, failures and config checks."""
from __future__ import annotations

import json
import math

import pytest

from filters.steps import prompt_text
from generators.backends.base import BackendError
from generators.scorers.base import PointScorer
from generators.scorers.prm import PRMConfig, ProcessRewardModel, aggregate, prm_inputs


def build_prm(out, *, num_labels: int = 2, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForTokenClassification

    from generators.models.tiny import build_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, bos_token_id=None, num_labels=num_labels)
    LlamaForTokenClassification(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def prm_dir(tmp_path_factory):
    return build_prm(tmp_path_factory.mktemp("prm"))


PROMPTS = [[{"role": "user", "content": "What is 2 + 3?"}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 4 x 5?"}]]
ANSWERS = ["Step 1: 2 + 3 = 5.\nStep 2: The answer is 5.", "Step 1: 4 x 5 = 20.\nStep 2: So 20.\nStep 3: Done."]


def _manual_probs(path, prompt, steps, sep="\n"):
    """P(good) at each step end, computed directly with transformers (one row, no padding)."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForTokenClassification.from_pretrained(path).eval()
    ids, pos = prm_inputs(tok, prompt_text(prompt), steps, sep)
    assert tok.decode(ids) == prompt_text(prompt) + "".join(s + sep for s in steps)
    assert all(tok.decode(ids[:p + 1]).endswith(s + sep) for p, s in zip(pos, steps))
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)[:, 1]
    return [float(probs[p]) for p in pos]


def test_prm_scores_match_per_step_probabilities(prm_dir):
    steps = [["Step 1: 2 + 3 = 5.", "Step 2: The answer is 5."],
             ["Step 1: 4 x 5 = 20.", "Step 2: So 20.", "Step 3: Done."]]
    expected = [_manual_probs(prm_dir, p, s) for p, s in zip(PROMPTS, steps)]
    for how in ("min", "product", "last"):
        prm = PRMConfig(model=str(prm_dir), aggregation=how, device="cpu").build()
        assert isinstance(prm, PointScorer) and isinstance(prm, ProcessRewardModel)
        prm.load()
        res = prm.evaluate(PROMPTS, ANSWERS)
        assert all(r.ok for r in res)
        for r, e in zip(res, expected):
            d = json.loads(r.details)
            assert d["step_probs"] == pytest.approx(e, abs=1e-5) and d["n_steps"] == len(e)
            want = {"min": min(e), "product": math.prod(e), "last": e[-1]}[how]
            assert r.score == pytest.approx(want, abs=1e-5)
        alone = prm.evaluate(PROMPTS[1:], ANSWERS[1:])[0].score        # right padding: batch independent
        assert alone == pytest.approx(res[1].score, abs=1e-5)
        prm.close()


def test_prm_failures_ids_and_config(prm_dir, tmp_path):
    prm = ProcessRewardModel(PRMConfig(model=str(prm_dir), device="cpu", split={"mode": "numbered"}))
    prm.load()
    res = prm.evaluate(PROMPTS[:1], ["no steps at all"])
    assert res[0].failure is not None and res[0].failure.reason == "no_steps" and not res[0].ok
    from transformers import AutoTokenizer

    steps = ["Step 1: 4 x 5 = 20.", "Step 2: So 20.", "Step 3: Done."]
    _, pos = prm_inputs(AutoTokenizer.from_pretrained(prm_dir), prompt_text(PROMPTS[1]), steps, "\n")
    assert pos[0] + 1 >= 16
    cut = ProcessRewardModel(PRMConfig(model=str(prm_dir), device="cpu", max_length=pos[0] + 1))
    cut.load()
    r = cut.evaluate(PROMPTS[1:], [ANSWERS[1]])[0]
    d = json.loads(r.details)
    assert (d["scored_steps"], d["n_steps"], d["truncated"]) == (1, 3, True)
    assert r.score == pytest.approx(_manual_probs(prm_dir, PROMPTS[1], steps)[0], abs=1e-5)
    none = ProcessRewardModel(PRMConfig(model=str(prm_dir), device="cpu", max_length=pos[0]))
    none.load()
    assert none.evaluate(PROMPTS[1:], [ANSWERS[1]])[0].failure.reason == "too_long"
    ids = {ProcessRewardModel(PRMConfig(model=str(prm_dir), aggregation=a)).id for a in ("min", "product", "last")}
    assert len(ids) == 3 and all(i.startswith("prm:") for i in ids)
    assert ProcessRewardModel(PRMConfig(model=str(prm_dir), separator="\n\n")).id != \
        ProcessRewardModel(PRMConfig(model=str(prm_dir))).id
    bad = ProcessRewardModel(PRMConfig(model=str(build_prm(tmp_path / "three", num_labels=3)), device="cpu"))
    with pytest.raises(BackendError, match="3 labels"):
        bad.load()
    with pytest.raises(ValueError, match="aggregation"):
        PRMConfig(model=str(prm_dir), aggregation="mean")
    assert aggregate([0.5, 0.25], "product") == 0.125


def test_prm_kind_registers_and_builds(prm_dir):
    from generators.scorers.config import build_scorer, parse_scorer_config, register_scorer_kind

    register_scorer_kind(PRMConfig)
    cfg = parse_scorer_config({"kind": "prm", "model": str(prm_dir), "aggregation": "product",
                               "split": {"mode": "lines"}})
    assert isinstance(cfg, PRMConfig) and cfg.model_folders() == [str(prm_dir)]
    assert isinstance(build_scorer(cfg), ProcessRewardModel) and not cfg.uses_backend and not cfg.pairwise
