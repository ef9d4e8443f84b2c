"""Every preference loss: two steps on a tiny model change every trainable parameter and give a
finite loss; full fine-tuning and LoRA. Plus config validation."""
from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from trainers.config import LOSSES, LoraOptions, PreferenceConfig

PAIRS = [
    {"prompt": [{"role": "user", "content": f"Say the number {i}."}],
     "chosen": [{"role": "assistant", "content": f"The number is {i}."}],
     "rejected": [{"role": "assistant", "content": "I will not say it, sorry."}]}
    for i in range(4)
]
STEP = dict(max_steps=2, batch_size=2, learning_rate=1e-3, max_length=64)


def _dataset(loss: str):
    from datasets import Dataset

    ds = Dataset.from_list(PAIRS)
    if loss == "kto":
        from trl import unpair_preference_dataset

        ds = unpair_preference_dataset(ds)
    return ds


def _build(loss: str, policy, tmp_path, **extra):
    cfg = PreferenceConfig(loss=loss, **STEP, **extra)
    if loss == "kto":
        from trainers.kto import build_kto_trainer

        return build_kto_trainer(policy=policy, dataset=_dataset(loss), config=cfg, output_dir=tmp_path)
    from trainers.dpo import build_preference_trainer

    return build_preference_trainer(policy=policy, dataset=_dataset(loss), config=cfg, output_dir=tmp_path)


def _train_and_check(trainer) -> None:
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert before, "no trainable parameters"
    trainer.train()
    after = dict(trainer.model.named_parameters())
    unchanged = [n for n, p in before.items() if torch.equal(p, after[n].detach())]
    assert not unchanged, f"parameters not updated: {unchanged[:5]}"
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses


@pytest.mark.parametrize("loss", LOSSES)
def test_two_steps_update_every_parameter(loss, tiny_model_dir, tmp_path):
    _train_and_check(_build(loss, tiny_model_dir, tmp_path))


@pytest.mark.parametrize("loss", ["sigmoid", "orpo", "kto"])
def test_bfloat16_mixed_precision_trains_on_cpu(loss, tiny_model_dir, tmp_path):
    # On a machine without a GPU, bf16 must reach TrainingArguments as CPU autocast (use_cpu).
    trainer = _build(loss, tiny_model_dir, tmp_path, dtype="bfloat16")
    assert trainer.args.bf16 and trainer.args.use_cpu == (not torch.cuda.is_available())
    _train_and_check(trainer)


@pytest.mark.parametrize("loss", ["sigmoid", "simpo", "kto"])
def test_lora_two_steps_update_every_lora_parameter(loss, tiny_model_dir, tmp_path):
    trainer = _build(loss, tiny_model_dir, tmp_path, lora=LoraOptions(r=4, alpha=8))
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable), trainable[:5]
    # LoRA B starts at zero, so the first step moves only B; two steps move A and B.
    _train_and_check(trainer)


def test_cdpo_is_label_smoothed_dpo():
    """The TRL loss combination behind cdpo equals the cDPO formula (1-e)*l(x) + e*l(-x)."""
    import torch.nn.functional as F

    from trainers.dpo import _dpo_loss_args

    e = 0.2
    args = _dpo_loss_args(PreferenceConfig(loss="cdpo", label_smoothing=e))
    x = torch.linspace(-4, 4, 9)
    sigmoid = -F.logsigmoid(x)
    robust = (-(1 - e) * F.logsigmoid(x) + e * F.logsigmoid(-x)) / (1 - 2 * e)     # TRL 1.16's robust loss
    w_sig, w_rob = args["loss_weights"]
    combined = w_sig * sigmoid + w_rob * robust
    cdpo = -(1 - e) * F.logsigmoid(x) - e * F.logsigmoid(-x)
    assert args["loss_type"] == ["sigmoid", "robust"]
    assert torch.allclose(combined, cdpo, atol=1e-6)


def test_unknown_loss_names_the_valid_ones():
    with pytest.raises(ValidationError, match="unknown loss 'dpo2'; expected one of sigmoid, ipo, cdpo, simpo, orpo, rpo, kto"):
        PreferenceConfig(loss="dpo2")


def test_config_rejects_contradictions():
    with pytest.raises(ValidationError, match="reference-free|no reference"):
        PreferenceConfig(loss="simpo", ref_update="soft")
    with pytest.raises(ValidationError, match="full fine-tuning"):
        PreferenceConfig(loss="sigmoid", ref_update="hard", lora=LoraOptions())
    with pytest.raises(ValidationError, match="max_steps=0"):
        PreferenceConfig(max_steps=0)
    with pytest.raises(ValidationError):
        PreferenceConfig(bogus=1)
    cfg = PreferenceConfig()
    with pytest.raises(ValidationError):
        cfg.beta = 0.5          # frozen
