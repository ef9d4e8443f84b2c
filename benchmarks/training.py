"""prefmill's DPO training vs a bare TRL DPOTrainer on the same data, model and config, in one run.

    python -m benchmarks.training                       # tiny random Llama (framework overhead)
    python -m benchmarks.training --model smollm2 --steps 3 --batch 8 --max-length 256 --lora

prefmill = train_dpo(): read the pinned pair version from the store, convert to a TRL dataset,
build the trainer, train, save, hash the folder and register it with lineage.
bare TRL = the same pairs as a `datasets.Dataset`, DPOTrainer(DPOConfig(same args)), train, save.
Runs alternate (bare, prefmill, bare, ...) so drift in machine load hits both; the figure is the
ratio of medians. Also prints the seconds per optimizer step of the bare run (the recipe figure).
Last line: `training_overhead: X.XX (prefmill time / bare TRL time)`.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import polars as pl

from pipelines.keys import pair_id, prompt_id
from pipelines.schemas import empty
from pipelines.store import Store
from trainers.config import LoraOptions, PreferenceConfig


def make_pairs(n: int, *, words: int) -> pl.DataFrame:
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"Write {words} words about topic number {i}, then stop."}]
        chosen = " ".join(f"good{i % 7}" for _ in range(words))
        rejected = " ".join(f"bad{i % 5}" for _ in range(words))
        pid = prompt_id(prompt)
        rows.append(dict(pair_id=pair_id(pid, f"c{i}", f"r{i}", "bench"), prompt_id=pid, prompt=prompt,
                         chosen=[{"role": "assistant", "content": chosen}],
                         rejected=[{"role": "assistant", "content": rejected}], chosen_id=f"c{i}",
                         rejected_id=f"r{i}", chosen_score=1.0, rejected_score=0.0, margin=1.0, strategy="bench"))
    return pl.DataFrame(rows, schema=empty("pairs").schema)


def bare_trl(policy: Path, frame: pl.DataFrame, cfg: PreferenceConfig, out: Path) -> float:
    """The plain TRL way: dataset, DPOConfig, DPOTrainer, train, save."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    t0 = time.perf_counter()
    ds = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
                            for r in frame.select("prompt", "chosen", "rejected").iter_rows(named=True)])
    tok = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    args = DPOConfig(**cfg.trl_kwargs(str(out)), beta=cfg.beta, loss_type=["sigmoid"])
    peft = cfg.lora.to_peft("CAUSAL_LM") if cfg.lora else None
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft)
    trainer.train()
    m = trainer.model.merge_and_unload() if cfg.lora else trainer.model
    m.save_pretrained(out)
    tok.save_pretrained(out)
    return time.perf_counter() - t0


def prefmill_run(store: Store, data: str, policy: Path, cfg: PreferenceConfig, out: Path, name: str) -> float:
    from trainers.dpo import train_dpo

    t0 = time.perf_counter()
    train_dpo(store, data=data, policy=policy, config=cfg, output_dir=out, name=name)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder or built-in name (default: a tiny random Llama)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--words", type=int, default=40, help="words per completion (sets the sequence length)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="prefmill-bench-train-"))
    if a.model is None:
        from generators.models.tiny import build_tiny_llama

        policy = build_tiny_llama(work / "tiny", seed=0)
    else:
        from generators.models.registry import resolve_model

        policy = resolve_model(a.model)
    store = Store(work / "store")
    frame = make_pairs(a.steps * a.batch, words=a.words)
    data = f"pairs@{store.append('pairs', frame, kind='pairs')}"
    cfg = PreferenceConfig(loss="sigmoid", max_steps=a.steps, batch_size=a.batch, max_length=a.max_length,
                           learning_rate=5e-5 if a.lora else 1e-6, lora=LoraOptions(r=16, alpha=32) if a.lora else None)
    bare, ours = [], []
    for r in range(a.repeats):
        bare.append(bare_trl(policy, frame, cfg, work / f"bare{r}"))
        ours.append(prefmill_run(store, data, policy, cfg, work / f"ours{r}", name=f"bench-{r}"))
        print(f"repeat {r}: bare TRL {bare[-1]:.2f} s, prefmill {ours[-1]:.2f} s")
    b, o = statistics.median(bare), statistics.median(ours)
    mode = "LoRA r=16" if a.lora else "full fine-tuning"
    print(f"model {policy.name}, {mode}, {a.steps} steps x batch {a.batch} x max_length {a.max_length}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"bare TRL: {b:.2f} s total, {b / a.steps:.3f} s/step (incl. load+save); prefmill: {o:.2f} s")
    print(f"training_overhead: {o / b:.2f} (prefmill time / bare TRL time)")


if __name__ == "__main__":
    main()
