"""Reference policies do what they claim: a hard update copies the policy, a soft update moves the
reference by alpha (TRL's TR-DPO sync), the between-round mix is alpha*previous + (1-alpha)*initial;
data policies pick the right tables."""
from __future__ import annotations

import pytest
import torch

from trainers.config import PreferenceConfig
from trainers.reference import next_reference, training_data

PAIRS = [{"prompt": [{"role": "user", "content": f"Count to {i}."}],
          "chosen": [{"role": "assistant", "content": " ".join(str(k) for k in range(i + 1))}],
          "rejected": [{"role": "assistant", "content": "No."}]} for i in range(2)]


def _trainer(policy, tmp_path, **cfg):
    from datasets import Dataset

    from trainers.dpo import build_preference_trainer

    config = PreferenceConfig(loss="sigmoid", max_steps=1, batch_size=2, learning_rate=1e-3, max_length=64,
                              ref_sync_steps=1, **cfg)
    return build_preference_trainer(policy=policy, dataset=Dataset.from_list(PAIRS), config=config, output_dir=tmp_path)


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_hard_update_copies_the_policy(tiny_model_dir, tmp_path):
    tr = _trainer(tiny_model_dir, tmp_path, ref_update="hard")
    ref0 = _params(tr.ref_model)
    tr.train()
    policy, ref = _params(tr.model), _params(tr.ref_model)
    assert any(not torch.equal(ref0[n], ref[n]) for n in ref)
    for n in policy:
        assert torch.equal(policy[n], ref[n]), n


def test_soft_update_moves_reference_by_alpha(tiny_model_dir, tmp_path):
    alpha = 0.3
    tr = _trainer(tiny_model_dir, tmp_path, ref_update="soft", ref_alpha=alpha)
    ref0 = _params(tr.ref_model)
    tr.train()
    policy, ref = _params(tr.model), _params(tr.ref_model)
    moved = 0
    for n in ref:
        expected = (1 - alpha) * ref0[n] + alpha * policy[n]
        assert torch.allclose(ref[n], expected, atol=1e-6), n
        moved += not torch.equal(ref[n], ref0[n])
    assert moved == len(ref)


def test_fixed_reference_stays(tiny_model_dir, tmp_path):
    tr = _trainer(tiny_model_dir, tmp_path, ref_update="fixed", precompute_ref_log_probs=False)
    ref0 = _params(tr.ref_model)
    tr.train()
    assert all(torch.equal(ref0[n], p) for n, p in _params(tr.ref_model).items())


def test_mix_between_rounds(tiny_model_dir, tiny_model_dir_b, tmp_path):
    from transformers import AutoModelForCausalLM

    out = next_reference("mix", initial=tiny_model_dir, previous=tiny_model_dir_b, alpha=0.25, output_dir=tmp_path / "m")
    a = _params(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    b = _params(AutoModelForCausalLM.from_pretrained(tiny_model_dir_b))
    m = _params(AutoModelForCausalLM.from_pretrained(out))
    for n in m:
        assert torch.allclose(m[n], 0.75 * a[n] + 0.25 * b[n], atol=1e-6), n
    assert next_reference("initial", initial=tiny_model_dir, previous=tiny_model_dir_b) == tiny_model_dir
    assert next_reference("previous", initial=tiny_model_dir, previous=tiny_model_dir_b) == tiny_model_dir_b
    with pytest.raises(ValueError, match="unknown reference policy 'latest'"):
        next_reference("latest", initial=tiny_model_dir, previous=tiny_model_dir_b)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass output_dir"):
        next_reference("mix", initial=tiny_model_dir, previous=tiny_model_dir_b)


def test_data_policies():
    refs = ["r0_pairs@1", "r1_pairs@0", "r2_pairs@3"]
    assert training_data(refs, policy="this_round", round=2).data == ("r2_pairs@3",)
    assert training_data(refs, policy="accumulate", round=1).data == ("r0_pairs@1", "r1_pairs@0")
    sdpo = training_data(refs, policy="sdpo", round=1)
    assert sdpo.data == ("r1_pairs@0",) and sdpo.reference_from == "previous"
    assert training_data(refs, policy="accumulate", round=2).reference_from is None
    with pytest.raises(ValueError, match="unknown data policy 'all'"):
        training_data(refs, policy="all", round=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="round=3"):
        training_data(refs, policy="this_round", round=3)
