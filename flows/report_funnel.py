"""Report sections built from the lineage records and the eval answers: the funnel and cost per
accepted pair, the pass-rate lift with its interval per constraint family, and the best and worst
eval answers per constraint kind.

    funnel_rows(lineage, recipe="quickstart")   # one row per stage run: calls, tokens, seconds, rows, drops
    funnel_section(lineage, recipe=..., prices={"prompt": 0.5, "completion": 1.5})   # $ per 1M tokens
"""
from __future__ import annotations

import json
from collections.abc import Mapping

import polars as pl

from flows.report_kit import Section, fmt


def funnel_rows(lineage: pl.DataFrame, *, recipe: str | None) -> pl.DataFrame:
    """The newest completion record of each table of the recipe, in the order the stages ran,
    with its usage stats (pipelines/driver.py) and drops decoded."""
    if lineage.is_empty():
        return pl.DataFrame()
    lin = lineage if recipe is None else lineage.filter(pl.col("table").str.starts_with(recipe + "."))
    if "stats" not in lin.columns:
        lin = lin.with_columns(pl.lit("{}").alias("stats"))
    lin = lin.sort("created_at").group_by("table", "stage", maintain_order=True).last()
    rows = []
    for r in lin.iter_rows(named=True):
        stats = json.loads(r["stats"] or "{}")
        drops = json.loads(r["drops"] or "{}")
        rows.append({"table": r["table"], "stage": r["stage"], "rows_in": r["rows_in"], "rows_out": r["rows_out"],
                     "dropped": sum(drops.values()), "drops": ", ".join(f"{k} {v}" for k, v in sorted(drops.items())),
                     "calls": int(stats.get("calls", 0)), "prompt_tokens": int(stats.get("prompt_tokens", 0)),
                     "completion_tokens": int(stats.get("completion_tokens", 0)), "wall_s": float(r["wall_s"] or 0),
                     "engine_s": float(stats.get("engine_s", 0.0))})
    return pl.DataFrame(rows)


def funnel_section(lineage: pl.DataFrame, *, recipe: str | None, prices: Mapping[str, float] | None = None
                   ) -> Section | None:
    """Funnel from prompts to pairs: per stage rows in/out, drops by reason, model calls, tokens,
    wall and engine seconds; then tokens and seconds per accepted pair (and the cost when a price
    per million tokens is configured)."""
    f = funnel_rows(lineage, recipe=recipe)
    if f.is_empty():
        return None
    cols = ["table", "stage", "rows_in", "rows_out", "dropped", "calls", "prompt_tokens", "completion_tokens",
            "wall_s", "engine_s", "drops"]
    rows = [[fmt(r[c]) for c in cols] for r in f.iter_rows(named=True)]
    pairs = f.filter(pl.col("stage") == "pairs")
    accepted = int(pairs["rows_out"].sum()) if pairs.height else 0
    tok = int(f["prompt_tokens"].sum() + f["completion_tokens"].sum())
    gen_s = float(f.filter(pl.col("stage") != "train")["wall_s"].sum())
    text = (f"{accepted} accepted pairs; {tok:,} model tokens and {gen_s:.0f} s of data stages (training "
            "excluded) in all")
    if accepted:
        text += f": {tok / accepted:,.0f} tokens and {gen_s / accepted:.2f} s per accepted pair"
        if prices:
            cost = (f["prompt_tokens"].sum() * prices.get("prompt", 0) + f["completion_tokens"].sum()
                    * prices.get("completion", 0)) / 1e6
            text += f", {cost / accepted:.6f} per pair at the configured price ({cost:.4f} in all)"
    return Section("Funnel and cost per accepted pair", text + ".", [(cols, rows)])


def lift_section(evals: pl.DataFrame) -> Section | None:
    """Pass-rate lift over round 0 with its paired bootstrap interval, overall and per constraint
    family, beside relevance, length and truncation of the same round."""
    if evals.is_empty():
        return None
    latest = evals.sort("eval_id").unique(subset=["round", "model", "metric"], keep="last")
    val = {(r["round"], r["metric"]): r["value"] for r in latest.iter_rows(named=True)}
    from pipelines.evals import length_changes

    changes = {r["round"]: length_changes(r["details"])
               for r in latest.filter(pl.col("metric") == "mean_length_words").iter_rows(named=True)}

    def change(k: int, part: str) -> str:
        c = changes.get(k, {})
        return f"{c[part]} (n={c['n_' + part]})" if part in c else "-"

    rows, fam_rows = [], []
    for r in latest.filter(pl.col("metric") == "pass_rate").sort("round").iter_rows(named=True):
        d = json.loads(r["details"] or "{}")
        lift = d.get("lift_vs_baseline")
        k = r["round"]
        rows.append([fmt(k), fmt(r["value"]), *( [fmt(lift["diff"]), f"[{lift['low']:+.3f}, {lift['high']:+.3f}]"]
                                                 if lift else ["-", "-"]),
                     fmt(val.get((k, "mean_relevance"))), fmt(val.get((k, "mean_length_words"))),
                     change(k, "all"), change(k, "base_finished"), fmt(val.get((k, "truncation_rate")))])
        for fam in d.get("by_family", []):
            if "diff" in fam:
                fam_rows.append([fmt(k), fam["family"], fmt(fam["n"]), fmt(fam["base"]), fmt(fam["new"]),
                                 fmt(fam["diff"]), f"[{fam['low']:+.3f}, {fam['high']:+.3f}]"])
    if not rows:
        return None
    tables = [(["round", "pass_rate", "lift vs r0", "95% CI", "mean relevance", "mean words", "words vs r0",
                "words vs r0 where r0 finished", "truncated"], rows)]
    if fam_rows:
        tables.append((["round", "family", "n", "r0", "this round", "lift", "95% CI"], fam_rows))
    return Section("Pass-rate lift with intervals", "Strict checks on the test split (held-out prompts, unseen "
                   "phrasings and kinds where the recipe's constraints have them); paired bootstrap 95% intervals "
                   "over prompts (per family: over prompt x constraint). Words against round 0's answers to the "
                   "same prompts: over all of them, and over the prompts whose round-0 answer finished (a base "
                   "model that loops to the token cap loses length when the loops go, without any finished "
                   "answer getting shorter).", tables)


def examples_section(answers: pl.DataFrame, prompts: pl.DataFrame, *, per_kind: int = 1) -> Section | None:
    """The best and the worst eval answer of the last round per constraint kind (strict checks),
    so a reader sees what passing and failing look like."""
    if answers.is_empty() or prompts.is_empty():
        return None
    from filters import instructions
    from filters.rule_rewards import instruction_reward

    frame = prompts.select("prompt_id", "messages", "constraints").join(
        answers.select("prompt_id", "completion", "finish_reason"), on="prompt_id")
    frame = frame.filter(pl.col("constraints").is_not_null() & (pl.col("constraints") != "[]"))
    if frame.is_empty():
        return None
    scored = instruction_reward(frame.lazy(), mode="all", strict=True, prompt="messages",
                                finish_reason="finish_reason").collect()
    rows = []
    by_kind: dict[str, list[dict]] = {}
    for r in scored.iter_rows(named=True):
        for c in instructions.loads(r["constraints"]):
            by_kind.setdefault(c["kind"], []).append(r)
    for kind in sorted(by_kind):
        items = sorted(by_kind[kind], key=lambda r: (-(r["score"] or 0), r["prompt_id"]))
        picks = items[:per_kind] + ([x for x in items[-per_kind:] if x not in items[:per_kind]])
        for r in picks:
            ask = r["messages"][-1]["content"]
            rows.append([kind, "pass" if (r["score"] or 0) >= 1 else "fail", ", ".join(r["failed"] or []) or "-",
                         ask[:160] + ("…" if len(ask) > 160 else ""),
                         (r["completion"] or "")[:240] + ("…" if len(r["completion"] or "") > 240 else "")])
    return Section("Eval answers: best and worst per constraint kind", "The last round's answers on the test "
                   "split, one passing and one failing example per kind where both exist.",
                   [(["kind", "result", "failed checks", "prompt", "answer"], rows)])
