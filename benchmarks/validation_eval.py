"""Evaluate model folders on a stored run's VALIDATION split (the tuning split: never trained on,
never the test split the demo reports), the demo's way: greedy answers (vLLM), strict pass-rate
with a paired bootstrap interval against the first model, truncation, relevance, mean words.
Use it to compare training changes on fixed stored pairs before adopting one:

    prefmill train --store S --data quickstart.r2.pairs --config variant.yaml \\
        --policy S/models/quickstart/r1 --reference S/models/quickstart/r1 --out /tmp/r2-variant
    python benchmarks/validation_eval.py --store S --prompts quickstart.prompts \\
        smollm2 S/models/quickstart/r1 S/models/quickstart/r2 /tmp/r2-variant

Prints one row per model (the first is the baseline of the lifts). The answers and metrics go to
--scratch (a separate store, tables `val<time>.*`), never into the run's store.

The demo's validation split is small (20 prompts: one prompt = 5 points). `--more-seeds FILE`
adds validation prompts built from the seed prompts the run did not use (its `seeds.cap` left
them out; a seed whose text begins any of the run's prompts is skipped), with validation-split
constraints drawn the demo's way (validation phrasings, values and kinds, never the test
split's), `--more-limit` of them.

`--split heldout` evaluates the TEST split instead (for a report after the decisions, never
for tuning); with `--more-seeds` the added prompts get test-split constraints (the kinds,
phrasings and values that training never sees). `--more-offset K` skips the first K unused
seeds: the sixth session's validation prompts took the first 100, so a test set must start
after them (`--more-offset 100`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True, help="the run's store (read only)")
    ap.add_argument("--prompts", default="quickstart.prompts", help="prompts table (with split == validation)")
    ap.add_argument("--scratch", default="/tmp/prefmill-validation-eval", help="store for the answers and metrics")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--more-seeds", help="seed JSONL (`prompt` per line): add validation prompts from unused seeds")
    ap.add_argument("--more-limit", type=int, default=120, help="at most this many added prompts")
    ap.add_argument("--more-offset", type=int, default=0, help="skip the first K unused seeds")
    ap.add_argument("--k-max", type=int, default=2, help="added prompts: most constraints per prompt (k_min 1)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "auto"),
                    help="the answering engine's precision (the demo's policy.dtype; earlier figures: float32)")
    ap.add_argument("models", nargs="+", help="model folders or built-in names; the first is the baseline")
    a = ap.parse_args(argv)

    import polars as pl

    from generators.backends.factory import BackendConfig, make_backend
    from generators.models.registry import resolve_model
    from generators.relevance import RelevanceScorer
    from pipelines.evals import EvalConfig, eval_responses_stage, length_changes, run_eval
    from pipelines.store import Store

    src, scratch = Store(a.store), Store(a.scratch)
    prompts = src.read(a.prompts).filter(pl.col("split") == a.split)
    if prompts.is_empty():
        raise SystemExit(f"error: no prompts with split == {a.split!r} in {a.prompts}; pick --split or --prompts")
    if a.more_seeds:
        prompts = pl.concat([prompts, _more_prompts(src.read(a.prompts), a.more_seeds, a.more_limit, a.k_max,
                                                          split=a.split, offset=a.more_offset)],
                            how="vertical_relaxed")
    tag = f"{int(time.time())}"
    scratch.append(f"val{tag}.prompts", prompts, kind="prompts")
    cfg = EvalConfig(split=a.split, max_tokens=a.max_tokens, kl_temperature=None)
    rel = RelevanceScorer()
    rel.load()
    baseline, rows = None, []
    try:
        for i, m in enumerate(a.models):
            folder = str(resolve_model(m))
            be = make_backend(BackendConfig(kind="vllm", model=folder, dtype=a.dtype))
            be.load()
            t0 = time.perf_counter()
            try:
                resp = eval_responses_stage(scratch, be, cfg, prompts=f"val{tag}.prompts", output=f"val{tag}.{i}.answers")
            finally:
                be.close()
            gen_s = time.perf_counter() - t0
            run_eval(scratch, prompts=f"val{tag}.prompts", responses=resp, model=m, round=i, config=cfg,
                     output=f"val{tag}.evals", baseline=baseline, relevance=rel)
            baseline = baseline or resp
            ev = scratch.read(f"val{tag}.evals").filter(pl.col("round") == i)
            got = {r["metric"]: r for r in ev.iter_rows(named=True)}
            pr = got.get("pass_rate")
            lift = json.loads(pr["details"]).get("lift_vs_baseline") if pr else None
            c = length_changes(got["mean_length_words"]["details"])
            words_vs = " / ".join(c[k] for k in ("all", "base_finished") if k in c) or "-"
            rows.append({"model": m, "pass_rate": pr["value"] if pr else None, "n": pr["n"] if pr else 0,
                         "lift": (f"{lift['diff']:+.3f} [{lift['low']:+.3f}, {lift['high']:+.3f}]" if lift else "-"),
                         "truncated": got["truncation_rate"]["value"],
                         "relevance": got.get("mean_relevance", {}).get("value"),
                         "words": got.get("mean_length_words", {}).get("value"),
                         "words vs first: all / where it finished": words_vs, "answer_s": round(gen_s)})
    finally:
        rel.close()
    # every column and the whole model path: polars elides columns past its default width, which
    # hid the truncation rate in the fifteenth session's run
    with pl.Config(tbl_cols=-1, tbl_width_chars=400, fmt_str_lengths=200):
        print(pl.DataFrame(rows).with_columns(pl.col(pl.Float64).round(3)))
    return 0


def _more_prompts(run_prompts, seeds_path: str, limit: int, k_max: int, *, split: str = "validation",
                  offset: int = 0):
    """Prompts of `split` from the seeds the run did not use (see the module docstring)."""
    import polars as pl

    from pipelines.prompts import prompt_row, prompts_frame
    from pipelines.seeds import ConstraintConfig, constrain

    used = [m[-1]["content"] for m in run_prompts["messages"].to_list()]
    cfg = ConstraintConfig(k_min=1, k_max=k_max)
    rows, skipped = [], 0
    for text in pl.read_ndjson(seeds_path)["prompt"].to_list():
        t = (text or "").strip()
        if not t or any(u.startswith(t) for u in used):
            continue
        if skipped < offset:
            skipped += 1
            continue
        row = prompt_row([{"role": "user", "content": t}], task_type="instruction", source="seed:unused",
                         split=split)
        rows.append(constrain(row, cfg))
        if len(rows) >= limit:
            break
    return prompts_frame(rows).select(run_prompts.columns)


if __name__ == "__main__":
    raise SystemExit(main())
