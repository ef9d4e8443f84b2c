"""Direction test (issue 12): training on a fixed chosen/rejected set raises the chosen-minus-
rejected log-prob margin, and the swapped set lowers it, for every loss (KTO: the desirable-minus-
undesirable margin, with the labels flipped for the swapped set). Log-probs are summed completion
log-probs from a plain forward (log_softmax over the full logits), independent of TRL's head and
of prefmill's, on the default (fast) training path."""
from __future__ import annotations

import pytest
import torch

from trainers.config import LOSSES, PreferenceConfig

PAIRS = [
    {"prompt": [{"role": "user", "content": f"Say the number {i}."}],
     "chosen": [{"role": "assistant", "content": f"The number is {i}."}],
     "rejected": [{"role": "assistant", "content": "I will not say it, sorry."}]}
    for i in range(4)
]


def _swapped(rows):
    return [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]


def completion_logprob(model, tok, prompt, completion) -> float:
    """log p(completion | prompt) from the full logits, with the chat template TRL applies."""
    p = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    full = tok.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    assert full[: len(p)] == p
    ids = torch.tensor([full])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    return float(logp[torch.arange(len(p) - 1, len(full) - 1), ids[0, len(p):]].sum())


def margin(model, tok, rows=PAIRS) -> float:
    model.eval()
    return sum(completion_logprob(model, tok, r["prompt"], r["chosen"])
               - completion_logprob(model, tok, r["prompt"], r["rejected"]) for r in rows) / len(rows)


def _train(loss: str, rows, policy, tmp_path):
    from datasets import Dataset

    cfg = PreferenceConfig(loss=loss, max_steps=3, batch_size=4, learning_rate=5e-4, max_length=64)
    ds = Dataset.from_list(rows)
    if loss == "kto":
        from trl import unpair_preference_dataset

        from trainers.kto import build_kto_trainer

        tr = build_kto_trainer(policy=policy, dataset=unpair_preference_dataset(ds), config=cfg, output_dir=tmp_path)
    else:
        from trainers.dpo import build_preference_trainer

        tr = build_preference_trainer(policy=policy, dataset=ds, config=cfg, output_dir=tmp_path)
    tr.train()
    return tr.model, tr.processing_class


@pytest.mark.parametrize("loss", LOSSES)
def test_training_moves_the_margin_toward_chosen(loss, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from trainers.fit import load_tokenizer

    before = margin(AutoModelForCausalLM.from_pretrained(tiny_model_dir), load_tokenizer(tiny_model_dir))
    up = margin(*_train(loss, PAIRS, tiny_model_dir, tmp_path / "set"))
    down = margin(*_train(loss, _swapped(PAIRS), tiny_model_dir, tmp_path / "swapped"))
    assert up > before + 1.0, (loss, before, up)
    assert down < before - 1.0, (loss, before, down)
