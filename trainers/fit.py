"""Running a built TRL trainer: load models and tokenizers, train, collect metrics, save the folder.

    tok = load_tokenizer(path); model = load_causal_lm(path, dtype="float32")
    metrics = fit_and_save(trainer, tokenizer=tok, output_dir=out, lora=cfg.lora)

The saved folder is a plain model (LoRA adapters merged by default) plus its tokenizer, so the
next round's backends and trainers load it like the base model. `.prefmill-complete` is written
last, so its presence means the save finished.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from trainers.config import LoraOptions

log = logging.getLogger("prefmill.trainers")
COMPLETE_MARK = ".prefmill-complete"
_METRIC_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
                "logps/chosen", "logps/rejected", "nll_loss", "log_odds_ratio", "kl", "accuracy", "margin",
                "mean_token_accuracy", "grad_norm", "learning_rate", "entropy")


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        raise ValueError(f"tokenizer in {str(path)!r} has no chat template; conversational training needs one")
    return tok


def load_causal_lm(path: str | Path, *, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    if not Path(path).is_dir():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist; pass a local model folder")
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype), local_files_only=True)


def collect_metrics(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """Last logged value of each training metric, the run summary (runtime, steps, mean loss) and
    the loss curve: [[step, loss], ...] of every logged step (all ranks averaged under DDP)."""
    out: dict[str, Any] = {"loss_curve": [[int(e["step"]), float(e["loss"])] for e in log_history
                                          if "loss" in e and "step" in e]}
    for entry in log_history:
        for k, v in entry.items():
            if k in _METRIC_KEYS or k.startswith(("rewards/", "logps/")):
                out[k] = float(v)
            elif k in ("train_loss", "train_runtime", "train_samples_per_second", "train_steps_per_second"):
                out[k] = float(v)
            elif k == "step":
                out["steps"] = int(v)
            elif k == "epoch":
                out["epochs"] = float(v)      # passes over the data (all processes' batches together)
    return out


def check_same_output_dir(accelerator, out: Path) -> None:
    """Every process must write to one folder; a one-line error (on every rank) if they differ."""
    from accelerate.utils import gather_object

    if accelerator.num_processes > 1:
        seen = sorted(set(gather_object([str(out.resolve())])))
        if len(seen) > 1:
            raise ValueError(f"the {accelerator.num_processes} processes disagree on the output folder "
                             f"({', '.join(seen)}); pass one --out folder that every process sees")


def fit_and_save(trainer, *, tokenizer, output_dir: str | Path, lora: LoraOptions | None) -> dict[str, Any]:
    """Train (every process), save the model folder and tokenizer (the main process only, the
    others wait), return the metrics."""
    out = Path(output_dir)
    acc = trainer.accelerator
    check_same_output_dir(acc, out)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / COMPLETE_MARK).unlink(missing_ok=True)
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)      # metrics go to logging and the registry, not stdout
    t0 = time.perf_counter()
    trainer.train()
    metrics = collect_metrics(trainer.state.log_history)
    metrics["wall_s"] = time.perf_counter() - t0
    acc.wait_for_everyone()
    if acc.is_main_process:
        model = acc.unwrap_model(trainer.model)
        if lora is not None and lora.merge:
            model = model.merge_and_unload()
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(str(out))
        (out / COMPLETE_MARK).write_text(json.dumps(metrics, sort_keys=True))
        log.info("saved %s (%s)", out, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    acc.wait_for_everyone()
    return metrics
