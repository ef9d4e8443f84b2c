"""A completion-only log-prob head for TRL's trainers: exact per-token log-probs, computed on the
positions that carry a label only.

TRL 1.16 patches every policy and reference with a fused LM head (`add_fused_lm_head`) that, off
CUDA/XPU, projects EVERY position (prompt and padding too) through the vocabulary in 32k-column
tiles, folds entropy, mean logit and top-1 into each tile element by element, and recomputes the
projection in the backward pass. On the demo's CPU that was about half of a DPO step. This head
keeps TRL's calling convention (`model(..., labels=labels, fused_lm_head=True)` returns a
`FusedCausalLMOutput` whose per-token fields are zero where the label is -100) but:

- runs the backbone without paying for padding or for a prompt twice (length groups and shared
  prompts, trainers/packing.py) and keeps the hidden states of the labelled positions only;
- projects only those positions: one `[n, H] x [H, V]` product forward, two backward (TRL: the
  same product over all positions, plus a recompute in the backward);
- computes the metric-only fields (entropy, mean logit, top-1) from the same logits without
  gradient, and skips them for the reference (TRL asks the reference for log-probs only).

The numbers are the same as TRL's head up to float rounding (tested to 1e-5 on the DPO loss and
its gradients). It materialises the `[n, V]` probabilities of the labelled positions, which is
what makes it fast on a CPU; on a GPU TRL's Triton kernel already skips unlabelled positions
without that memory, so `use_completion_head` is only the default without CUDA.

    class MyDPOTrainer(CompletionHeadMixin, DPOTrainer): ...
    trainer = MyDPOTrainer(..., completion_head=use_completion_head(cfg.logprob_head))
"""
from __future__ import annotations

import logging
import shutil
import types
from pathlib import Path
from typing import Any

import torch

from trainers.packing import labelled_hidden

log = logging.getLogger("prefmill.trainers")
_SCALING_ATTRS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                  "logits_scaling")


class CompletionLogProbs(torch.autograd.Function):
    """log p(target) of `hidden @ weight.T + bias` per row, plus optional metric fields (no grad)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                metrics: bool, grad_enabled: bool):
        ctx.set_materialize_grads(False)
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        logits = torch.mm(hidden.to(dtype), weight.to(dtype).t()).float()
        if bias is not None:
            logits += bias.float()
        entropy = mean_logits = is_top1 = None
        if metrics:
            mean_logits = logits.mean(-1)
            top = logits.max(-1)
            # first maximum, as TRL counts it: a tie with an earlier token is not a top-1 hit
            is_top1 = top.indices == targets
        lse = torch.logsumexp(logits, dim=-1)
        logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
        need_grad = grad_enabled and any(ctx.needs_input_grad[:3])   # needs_input_grad ignores no_grad
        if metrics or need_grad:
            probs = (logits - lse.unsqueeze(-1)).exp_()
            if metrics:
                entropy = lse - torch.linalg.vecdot(probs, logits)      # H = logsumexp(z) - sum_v p_v z_v
            del logits
            if need_grad:
                ctx.save_for_backward(hidden, weight, bias, targets, probs)
                ctx.dtype = dtype
        outs = (logprobs, entropy, mean_logits, is_top1)
        ctx.mark_non_differentiable(*(x for x in outs[1:] if x is not None))
        return outs

    @staticmethod
    def backward(ctx, grad_logprobs, *_):  # type: ignore[override]
        hidden, weight, bias, targets, probs = ctx.saved_tensors
        if grad_logprobs is None:
            return None, None, None, None, None, None
        # d log p_t / d z_v = 1[v = t] - p_v; the saved probabilities become the logits' gradient in place
        grad = probs.mul_(-grad_logprobs.float().unsqueeze(-1))
        grad.scatter_add_(-1, targets.unsqueeze(-1), grad_logprobs.float().unsqueeze(-1))
        g = grad.to(ctx.dtype)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.mm(g, weight.to(ctx.dtype)).to(hidden.dtype) if need_h else None
        grad_w = torch.mm(g.t(), hidden.to(ctx.dtype)).to(weight.dtype) if need_w else None
        grad_b = grad.sum(0).to(bias.dtype) if need_b and bias is not None else None
        return grad_h, grad_w, grad_b, None, None, None


def supports(model: Any) -> bool:
    """True when the head is exact for `model`: a plain causal LM without logit scaling or soft-capping."""
    cfg = model.config.get_text_config()
    if any(getattr(cfg, a, None) not in (None, 1.0) for a in _SCALING_ATTRS):
        return False
    if getattr(cfg, "output_router_logits", False):
        return False
    return model.get_output_embeddings() is not None and hasattr(model, "base_model")


def add_completion_head(model: Any, *, metrics: bool) -> bool:
    """Replace the fused-head path of `model.forward` (as TRL patched it) with the completion-only
    head. Calls without `fused_lm_head=True` go to the previous forward unchanged. Returns False
    (and changes nothing) when the model is not supported."""
    if not supports(model):
        log.info("completion head: %s has logit scaling or MoE routing; keeping TRL's fused head",
                 type(model).__name__)
        return False
    previous = model.forward

    def forward(self, *args, fused_lm_head: bool = False, labels=None, shift_labels=None, num_items_in_batch=None,
                **kwargs):
        if not fused_lm_head:
            return previous(*args, fused_lm_head=False, labels=labels, shift_labels=shift_labels,
                            num_items_in_batch=num_items_in_batch, **kwargs)
        from trl.trainer.utils import FusedCausalLMOutput

        head = self.get_output_embeddings()
        hidden, rows, cols, shape = labelled_hidden(self, args, kwargs, labels, shift_labels)
        targets = (labels[:, 1:] if shift_labels is None else shift_labels).to(head.weight.device)[rows, cols]
        per_token = CompletionLogProbs.apply(hidden.to(head.weight.device), head.weight, head.bias, targets, metrics,
                                             torch.is_grad_enabled())
        # index_put keeps an all-masked batch connected to the graph (a zero, differentiable)
        log_probs, entropy, mean_logits, is_top1 = (
            None if x is None else x.new_zeros(shape).index_put((rows, cols), x) for x in per_token)
        n = rows.numel()
        loss = -log_probs.sum() / (max(n, 1) if num_items_in_batch is None else num_items_in_batch)
        mask = torch.zeros(shape, dtype=torch.bool, device=rows.device).index_put_((rows, cols), torch.tensor(True))
        return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy, mean_logits=mean_logits,
                                   is_top1=is_top1, label_mask=mask)

    model.forward = types.MethodType(forward, model)
    return True


def use_completion_head(setting: str) -> bool:
    """Resolve the config's `logprob_head` setting: auto = the completion head without CUDA."""
    if setting == "auto":
        return not torch.cuda.is_available()
    return setting == "completion"


def patch_trainer(trainer: Any) -> bool:
    """Put the completion head on a built TRL trainer's policy (with the metric fields its loss logs)
    and reference (log-probs only); idempotent. Returns whether the policy carries it."""
    model = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    if not getattr(model, "_prefmill_completion_head", False):
        model._prefmill_completion_head = add_completion_head(model, metrics=True)
    ref = getattr(trainer, "ref_model", None)
    if model._prefmill_completion_head and ref is not None:
        ref = trainer.accelerator.unwrap_model(ref)
        if not getattr(ref, "_prefmill_completion_head", False):
            ref._prefmill_completion_head = add_completion_head(ref, metrics=False)
    return model._prefmill_completion_head


class CompletionHeadMixin:
    """Put before a TRL trainer class (DPOTrainer, KTOTrainer, SFTTrainer): `completion_head=True`
    patches the completion head in before TRL's reference precompute (which runs inside
    `__init__`) and after construction; once the reference log-probs are stored in the dataset the
    reference model is dropped, so training holds one model.

    Several processes: TRL 1.16 caches the precomputed log-probs in an Arrow file next to the
    dataset's own files, which an in-memory dataset lacks (each process would pick its own random
    temp file). The dataset is first saved once under the output folder
    (`.prefmill-precompute/`, removed when training ends) so that every process reads one file."""

    def __init__(self, *args: Any, completion_head: bool = False, **kwargs: Any) -> None:
        self._completion_head = completion_head
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        if completion_head:
            patch_trainer(self)
        if getattr(self, "precompute_ref_logps", False) and getattr(self, "ref_model", None) is not None:
            self.ref_model = None

    def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
        if self._completion_head:
            patch_trainer(self)
        acc = self.accelerator  # type: ignore[attr-defined]
        if acc.num_processes > 1 and not dataset.cache_files:
            from datasets import load_from_disk

            folder = self._precompute_dir() / name
            if acc.is_main_process:
                shutil.rmtree(folder, ignore_errors=True)
                dataset.save_to_disk(str(folder))
            acc.wait_for_everyone()
            dataset = load_from_disk(str(folder))
        return super()._precompute_ref_logps(dataset, name, batch_size)  # type: ignore[misc]

    def _precompute_dir(self) -> Path:
        return Path(self.args.output_dir) / ".prefmill-precompute"  # type: ignore[attr-defined]

    def train(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().train(*args, **kwargs)  # type: ignore[misc]
        finally:
            if self.accelerator.is_main_process:  # type: ignore[attr-defined]
                shutil.rmtree(self._precompute_dir(), ignore_errors=True)
