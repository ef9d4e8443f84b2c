"""Training speed, side by side in one run: today's DPO step against prefmill's, and prefmill's
whole training run against a bare TRL DPOTrainer.

    python -m benchmarks.training                            # tiny random Llama: 5 repeats each
    python -m benchmarks.training --model smollm2 --repeats 3 --overhead-repeats 3 --overhead-steps 1

Pairs: demo-like pairs built from recipes/data/seed_prompts.jsonl with one of the demo's
instructions each and answers of --answer-words words (default 20-200: SmolLM2 writes 129 words
on average within the demo's 256 new tokens), stored once as a pinned `pairs` version; every side
reads the same pairs in the same order. Config: the demo's (sigmoid DPO, beta 0.1, lr 5e-5,
batch 8, max_length 384, full fine-tuning, float32, reference = the policy's own folder, as
`rounds.reference: previous` passes it); --new-dtype bfloat16 runs the new side in CPU
mixed precision.

1. DPO step. "today" = TRL's DPOTrainer as trainers/dpo.py built it before the fast path: TRL's
   fused LM head over every position and a reference forward every step (logprob_head='trl',
   precompute_ref_log_probs=False); "new" = build_preference_trainer's defaults (completion-only
   head in length groups, reference log-probs precomputed once). Both trainers live in one
   process; a step is training_step + clip + optimizer + scheduler on batch k of the same pairs.
   The order of the 2 x (1 + repeats) steps is shuffled (seeded), the first step of each side is
   a warm-up and is not counted. Setup (model loads, tokenisation, and for "new" the reference
   precompute over all the pairs) is timed too, so the per-round figure includes it.
2. Training overhead (issue 14): prefmill's train_dpo (store read, dataset, trainer, train, save,
   register with lineage) against bare TRL (dataset, DPOConfig with the same args, DPOTrainer,
   train, save), each a whole run of --overhead-steps steps; randomised order, one warm-up run
   per side, --overhead-repeats counted runs. Bare TRL is run as a TRL user writes it by default.

Prints per side the median and range, the load average before and after, and last
`dpo_step_speedup: X.XX` (today's median step time / new median step time).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

from pipelines.keys import pair_id, prompt_id
from pipelines.schemas import empty
from pipelines.store import Store
from trainers.config import PreferenceConfig

SEEDS = Path(__file__).resolve().parents[1] / "recipes" / "data" / "seed_prompts.jsonl"
INSTRUCTIONS = ("Answer in at most 50 words.", "Do not use any commas in your response.",
                "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
                'Start your response with the exact phrase "Here is my answer".',
                "Your answer must contain exactly 3 bullet points in markdown format.",
                'Include the keywords "river" and "light" in the response.',
                "Wrap your entire output in JSON format.")


def demo_pairs(n: int, *, seed: int = 0, length: tuple[int, int] = (20, 200)) -> pl.DataFrame:
    """n pairs shaped like the demo's: seed prompt + instruction, two answers of `length` words (min, max)."""
    rng = random.Random(seed)
    seeds = [json.loads(x)["prompt"] for x in SEEDS.read_text().splitlines() if x.strip()]
    words = " ".join(seeds).replace(".", "").split()

    def answer() -> list[dict[str, str]]:
        return [{"role": "assistant", "content": " ".join(rng.choice(words) for _ in range(rng.randint(*length))) + "."}]

    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"{seeds[i % len(seeds)]} {INSTRUCTIONS[i % len(INSTRUCTIONS)]}"}]
        pid = prompt_id(prompt)
        rows.append(dict(pair_id=pair_id(pid, f"c{i}", f"r{i}", "bench"), prompt_id=pid, prompt=prompt,
                         chosen=answer(), rejected=answer(), chosen_id=f"c{i}", rejected_id=f"r{i}",
                         chosen_score=1.0, rejected_score=0.0, margin=1.0, strategy="bench"))
    return pl.DataFrame(rows, schema=empty("pairs").schema)


def summary(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.3f} s (range {min(xs):.3f}-{max(xs):.3f}, n={len(xs)})"


def load() -> str:
    return "load average %.1f %.1f %.1f" % os.getloadavg()


class Stepper:
    """One built trainer driven a step at a time on its own train dataloader."""

    def __init__(self, build: Callable[[], object], steps: int):
        import torch

        t0 = time.perf_counter()
        self.trainer = build()
        self.setup_s = time.perf_counter() - t0
        self.trainer.create_optimizer_and_scheduler(num_training_steps=steps)
        self.trainer.current_gradient_accumulation_steps = 1
        self.batches = iter(self.trainer.get_train_dataloader())
        self.torch = torch
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.inputs: list[object] = []

    def step(self) -> None:
        tr, torch = self.trainer, self.torch
        batch = next(self.batches)
        self.inputs.append(batch["input_ids"])
        w, c = time.perf_counter(), time.process_time()
        # Trainer.train() gets mixed precision from accelerate wrapping the model's forward in
        # autocast; a step driven by hand must enter it itself (before the nineteenth session it
        # did not, so the "bfloat16" side ran in float32)
        with tr.accelerator.autocast():
            tr.training_step(tr.model, batch)
        torch.nn.utils.clip_grad_norm_(tr.model.parameters(), tr.args.max_grad_norm)
        tr.optimizer.step()
        tr.lr_scheduler.step()
        tr.model.zero_grad(set_to_none=True)
        self.wall.append(time.perf_counter() - w)
        self.cpu.append(time.process_time() - c)


def step_comparison(policy: Path, frame: pl.DataFrame, cfg: PreferenceConfig, work: Path, repeats: int,
                    seed: int, new_dtype: str = "float32") -> float:
    from trainers.dataset import preference_dataset
    from trainers.dpo import build_preference_trainer

    steps = repeats + 1
    today_cfg = cfg.model_copy(update={"logprob_head": "trl", "precompute_ref_log_probs": False})
    new_cfg = cfg.model_copy(update={"dtype": new_dtype})
    sides = {
        "today": Stepper(lambda: build_preference_trainer(policy=policy, dataset=preference_dataset(frame),
                                                          config=today_cfg, output_dir=work / "today",
                                                          reference=policy), steps),
        "new": Stepper(lambda: build_preference_trainer(policy=policy, dataset=preference_dataset(frame),
                                                        config=new_cfg, output_dir=work / "new", reference=policy),
                      steps),
    }
    order = ["today", "new"] * steps
    random.Random(seed).shuffle(order)
    print(f"step order: {' '.join(order)}", flush=True)
    for name in order:
        sides[name].step()
        print(f"  {name} step {len(sides[name].wall)}: {sides[name].wall[-1]:.2f} s wall, "
              f"{sides[name].cpu[-1]:.2f} s cpu", flush=True)
    a, b = sides["today"], sides["new"]
    if any(x.shape != y.shape or not bool((x == y).all()) for x, y in zip(a.inputs, b.inputs)):
        raise RuntimeError("the two sides did not see the same batches; the comparison is void")
    for name, s in sides.items():
        print(f"{name}: setup {s.setup_s:.1f} s; step {summary(s.wall[1:])}; cpu {summary(s.cpu[1:])}")
    speed = statistics.median(a.wall[1:]) / statistics.median(b.wall[1:])
    cpu_speed = statistics.median(a.cpu[1:]) / statistics.median(b.cpu[1:])
    per_round = (a.setup_s + sum(a.wall)) / (b.setup_s + sum(b.wall))
    print(f"step speedup {speed:.2f} (cpu time {cpu_speed:.2f}); setup + all {steps} steps "
          f"(includes new's reference precompute over the {frame.height} pairs): {per_round:.2f}")
    return speed


def bare_trl(policy: Path, frame: pl.DataFrame, cfg: PreferenceConfig, out: Path) -> None:
    """The plain TRL way: dataset, DPOConfig, DPOTrainer, train, save."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import DPOConfig, DPOTrainer

    ds = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
                            for r in frame.select("prompt", "chosen", "rejected").iter_rows(named=True)])
    tok = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    args = DPOConfig(**cfg.trl_kwargs(str(out)), beta=cfg.beta, loss_type=["sigmoid"])
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    trainer.remove_callback(PrinterCallback)       # as prefmill does: metrics are not printed
    trainer.train()
    trainer.model.save_pretrained(out)
    tok.save_pretrained(out)


def overhead(policy: Path, frame: pl.DataFrame, cfg: PreferenceConfig, work: Path, repeats: int, seed: int) -> float:
    from trainers.dpo import train_dpo

    store = Store(work / "store")
    data = f"pairs@{store.append('pairs', frame, kind='pairs')}"
    runs = {"bare": lambda r: bare_trl(policy, frame, cfg, work / f"bare{r}"),
            "prefmill": lambda r: train_dpo(store, data=data, policy=policy, config=cfg,
                                            output_dir=work / f"ours{r}", name=f"bench-{r}")}
    order = ["bare", "prefmill"] * (repeats + 1)
    random.Random(seed + 1).shuffle(order)
    times: dict[str, list[float]] = {"bare": [], "prefmill": []}
    for i, name in enumerate(order):
        t0 = time.perf_counter()
        runs[name](i)
        times[name].append(time.perf_counter() - t0)
        print(f"  {name} run {len(times[name])}: {times[name][-1]:.2f} s", flush=True)
    for name, xs in times.items():
        print(f"{name}: whole run {summary(xs[1:])} (first run = warm-up, not counted)")
    ratio = statistics.median(times["prefmill"][1:]) / statistics.median(times["bare"][1:])
    print(f"training_overhead: {ratio:.2f} (prefmill whole run / bare TRL whole run, medians)")
    return ratio


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder or built-in name (default: a tiny random Llama)")
    ap.add_argument("--repeats", type=int, default=5, help="counted steps per side (plus one warm-up each)")
    ap.add_argument("--overhead-repeats", type=int, default=5, help="counted whole runs per side (0 = skip)")
    ap.add_argument("--overhead-steps", type=int, default=2, help="optimizer steps in each whole run")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--answer-words", default="20-200", help="answer length range in words, MIN-MAX")
    ap.add_argument("--new-dtype", choices=("float32", "bfloat16", "auto"), default="float32",
                    help="precision of the new side (bfloat16 = CPU autocast mixed precision)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):
        os.environ.setdefault(name, "1")
    import torch
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    if a.threads:
        torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="prefmill-bench-train-"))
    if a.model is None:
        from generators.models.tiny import build_tiny_llama

        policy = build_tiny_llama(work / "tiny", seed=0)
    else:
        from generators.models.registry import resolve_model

        policy = resolve_model(a.model)
    cfg = PreferenceConfig(loss="sigmoid", beta=0.1, learning_rate=5e-5, batch_size=a.batch, max_length=a.max_length,
                           max_steps=a.repeats + 1)
    print(f"model {policy.name}, batch {a.batch} pairs, max_length {a.max_length}, full fine-tuning, float32, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cpus; {load()}", flush=True)
    if a.overhead_repeats:
        frame = demo_pairs(a.overhead_steps * a.batch, seed=a.seed)
        overhead(policy, frame, cfg.model_copy(update={"max_steps": a.overhead_steps}), work, a.overhead_repeats,
                 a.seed)
        print(load(), flush=True)
    lo, hi = (int(x) for x in a.answer_words.split("-"))
    speed = step_comparison(policy, demo_pairs((a.repeats + 1) * a.batch, seed=a.seed, length=(lo, hi)), cfg, work,
                            a.repeats, a.seed, new_dtype=a.new_dtype)
    print(load())
    print(f"dpo_step_speedup: {speed:.2f}")


if __name__ == "__main__":
    main()
