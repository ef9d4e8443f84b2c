"""The fast training path changes no numbers: the completion-only head (length groups, prompts
computed once) and precomputed reference log-probs give the loss and gradients of TRL's own path
(fused head over every position, a reference forward each step) to 1e-5, for every DPOTrainer
loss and KTO, on pairs of very different lengths; and over two optimizer steps."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainers.config import PreferenceConfig
from trainers.logps import CompletionLogProbs
from trainers.packing import length_groups, right_padded_lengths

WORDS = "the river light runs over stones and the small town wakes under a grey sky".split()
PAIRS = [{"prompt": [{"role": "user", "content": f"Describe scene {i} " + "in detail " * (i % 3)}],
          "chosen": [{"role": "assistant", "content": " ".join(WORDS[: 3 + 4 * i])}],
          "rejected": [{"role": "assistant", "content": " ".join(reversed(WORDS[: 12 - 3 * i]))}]}
         for i in range(4)]
TODAY = dict(logprob_head="trl", precompute_ref_log_probs=False)


def _dataset(loss: str):
    from datasets import Dataset

    ds = Dataset.from_list(PAIRS)
    if loss == "kto":
        from trl import unpair_preference_dataset

        ds = unpair_preference_dataset(ds)
    return ds


def _trainer(loss, policy, reference, tmp_path, **cfg):
    config = PreferenceConfig(loss=loss, max_steps=2, batch_size=len(PAIRS) * (2 if loss == "kto" else 1),
                              learning_rate=1e-3, max_length=64, **cfg)
    if loss == "kto":
        from trainers.kto import build_kto_trainer

        return build_kto_trainer(policy=policy, dataset=_dataset(loss), config=config, output_dir=tmp_path,
                                 reference=reference)
    from trainers.dpo import build_preference_trainer

    return build_preference_trainer(policy=policy, dataset=_dataset(loss), config=config, output_dir=tmp_path,
                                    reference=reference)


def _loss_and_grads(trainer):
    batch = next(iter(trainer.get_train_dataloader()))      # the whole set: one batch, any order
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "cdpo", "rpo", "kto"])
def test_fast_path_gives_todays_loss_and_gradients(loss, tiny_model_dir, tiny_model_dir_b, tmp_path):
    old = _trainer(loss, tiny_model_dir, tiny_model_dir_b, tmp_path / "old", **TODAY)
    new = _trainer(loss, tiny_model_dir, tiny_model_dir_b, tmp_path / "new")
    assert new.precompute_ref_logps and new.ref_model is None and not old.precompute_ref_logps
    assert getattr(new.model, "_prefmill_completion_head", False)
    a, ga = _loss_and_grads(old)
    b, gb = _loss_and_grads(new)
    assert abs(a - b) < 1e-5, (a, b)
    assert ga.keys() == gb.keys() and ga
    for n in ga:
        scale = ga[n].abs().max().item() + 1e-8
        assert (ga[n] - gb[n]).abs().max().item() / scale < 1e-4, n


@pytest.mark.parametrize("loss", ["sigmoid", "rpo"])
def test_length_desensitized_loss_on_both_paths(loss, tiny_model_dir, tiny_model_dir_b, tmp_path):
    """LD-DPO (ld_alpha): TRL's option reaches the trainer, both heads give the same loss, and it
    differs from plain DPO on pairs of different lengths (the tail past the shorter answer counts
    alpha times)."""
    old = _trainer(loss, tiny_model_dir, tiny_model_dir_b, tmp_path / "old", ld_alpha=0.3, **TODAY)
    new = _trainer(loss, tiny_model_dir, tiny_model_dir_b, tmp_path / "new", ld_alpha=0.3)
    plain = _trainer(loss, tiny_model_dir, tiny_model_dir_b, tmp_path / "plain", **TODAY)
    assert old.args.ld_alpha == new.args.ld_alpha == 0.3 and plain.args.ld_alpha is None
    a, b, c = _loss_and_grads(old)[0], _loss_and_grads(new)[0], _loss_and_grads(plain)[0]
    assert abs(a - b) < 1e-5, (a, b)
    assert abs(a - c) > 1e-4, (a, c)
    with pytest.raises(ValueError, match="ld_alpha with loss='simpo'"):
        PreferenceConfig(loss="simpo", ld_alpha=0.5)


def test_two_steps_log_the_same_losses(tiny_model_dir, tiny_model_dir_b, tmp_path):
    runs = []
    for name, extra in (("old", TODAY), ("new", {})):
        tr = _trainer("sigmoid", tiny_model_dir, tiny_model_dir_b, tmp_path / name, **extra)
        tr.args.per_device_train_batch_size = 2
        tr.train()
        runs.append([e["loss"] for e in tr.state.log_history if "loss" in e])
    # the second loss is computed after one optimizer step, so it also checks the update (parameters
    # are not compared element-wise: Adam turns rounding-level gradients of unused embedding rows
    # into lr-sized steps on either side)
    la, lb = runs
    assert len(la) == len(lb) == 2 and max(abs(x - y) for x, y in zip(la, lb)) < 1e-5, (la, lb)


def test_head_function_matches_log_softmax():
    torch.manual_seed(0)
    h = torch.randn(7, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    b = torch.randn(50, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 50, (7,))
    t[0] = int((h[0] @ w.T + b).argmax())                   # one certain top-1 hit
    logp, ent, mean, top1 = CompletionLogProbs.apply(h, w, b, t, True, True)
    logits = h @ w.T + b
    ref = F.log_softmax(logits, -1)
    want = ref.gather(-1, t[:, None]).squeeze(-1)
    assert torch.allclose(logp, want.float() if logp.dtype != want.dtype else want, atol=1e-6)
    assert torch.allclose(ent.double(), -(ref.exp() * ref).sum(-1), atol=1e-5)
    assert torch.allclose(mean.double(), logits.mean(-1), atol=1e-5)
    assert torch.equal(top1, logits.argmax(-1) == t) and bool(top1[0])
    g = torch.randn(7, dtype=torch.float64)
    got = torch.autograd.grad((logp * g).sum(), (h, w, b))
    exp = torch.autograd.grad((want * g).sum(), (h, w, b))
    for x, y in zip(got, exp):
        assert torch.allclose(x.double(), y, rtol=1e-4, atol=1e-4)


def test_length_groups_cover_every_row_once_and_save_padding():
    lengths = [130, 70, 72, 128, 90, 71, 131, 95]
    groups = length_groups(lengths, overhead=8)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    padded = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    assert padded < len(lengths) * max(lengths) and len(groups) > 1
    assert length_groups([5, 5, 5]) == [[0, 1, 2]]
    assert right_padded_lengths(torch.tensor([[1, 1, 0], [1, 1, 1]])).tolist() == [2, 3]
    assert right_padded_lengths(torch.tensor([[0, 1, 1], [1, 1, 1]])) is None        # left padding: no groups


def test_shared_prompt_hidden_states_equal_a_plain_forward(tiny_model_dir, tmp_path):
    from trainers.packing import _shared_prompts, labelled_hidden

    tr = _trainer("sigmoid", tiny_model_dir, None, tmp_path, **TODAY)
    batch = next(iter(tr.get_train_dataloader()))
    ids, am = batch["input_ids"], batch["attention_mask"]
    labels = ids.masked_fill(batch["completion_mask"] == 0, -100)
    model = tr.model.eval()
    with torch.no_grad():
        plain = model.base_model(input_ids=ids, attention_mask=am).last_hidden_state[:, :-1]
        grid = labels[:, 1:] != -100
        assert _shared_prompts(model, ids, am, grid, am.sum(1)) is not None       # the pair layout is recognised
        hidden, rows, cols, shape = labelled_hidden(model, (), {"input_ids": ids, "attention_mask": am}, labels, None)
    assert shape == grid.shape and rows.numel() == int(grid.sum())
    assert torch.allclose(hidden, plain[rows, cols], atol=1e-5)
    # rows that are not [chosen..., rejected...] of one prompt each fall back to groups
    swapped = torch.cat([ids[1:2], ids[0:1], ids[2:]])
    assert _shared_prompts(model, swapped, am, grid, am.sum(1)) is None


def test_precompute_setting_resolves():
    assert PreferenceConfig().precompute
    assert not PreferenceConfig(ref_update="soft").precompute
    assert not PreferenceConfig(loss="simpo").precompute
    assert not PreferenceConfig(precompute_ref_log_probs=False).precompute
    with pytest.raises(ValueError, match="fixed reference"):
        PreferenceConfig(ref_update="hard", precompute_ref_log_probs=True)
