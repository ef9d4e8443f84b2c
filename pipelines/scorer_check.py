"""Scorer check: how well a scorer orders labelled preference pairs before its scores are used.

    result = check_scorer(store, {"kind": "rm", "model": "path/to/rm"}, "heldout_pairs@2")
    result["accuracy"]            # share of pairs where chosen scores strictly higher
    require_accuracy(result, 0.6) # raises ScorerCheckError below the minimum (rounds refuse to run)

Pointwise scorers (rm, multi_rm, judge, critique, rule_*) score chosen and rejected; a pair whose
either score is unreadable counts as failed, ties are reported apart and count as wrong. With
`other`, the agreement rate of the two scorers' orderings is reported. A pairwise judge is asked
in both orders: accuracy = consistent verdicts naming the chosen response, position_bias_rate =
share of readable pairs whose verdict flips with the order. `prefmill scorers check` prints it.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from generators.backends.base import Backend
from generators.scorers.config import build_scorer, parse_scorer_config
from generators.scorers.judge_parse import swap_verdict
from pipelines.scoring import evaluate_frame
from pipelines.store import Store, TableRef


class ScorerCheckError(ValueError):
    """A scorer is not good enough (or cannot be checked) on the labelled pairs."""


def _pairs_frame(store: Store, ref: TableRef, prompts: TableRef | None) -> pl.DataFrame:
    kind = store.kind(ref.name)
    if kind != "pairs":
        raise ScorerCheckError(f"table {ref.name!r} holds {kind!r} rows; check a scorer on a `pairs` table")
    pairs = store.read(ref, columns=["pair_id", "prompt_id", "prompt", "chosen", "rejected"]).sort("pair_id")
    if prompts is not None:
        extra = store.read(prompts, columns=["prompt_id", "constraints", "reference"])
        pairs = pairs.join(extra, on="prompt_id", how="left")
    else:
        pairs = pairs.with_columns(pl.lit(None, pl.String).alias("constraints"), pl.lit(None, pl.String).alias("reference"))
    text = lambda c: pl.col(c).list.eval(pl.element().struct.field("content")).list.join("\n")  # noqa: E731
    return pairs.with_columns(text("chosen").alias("chosen_text"), text("rejected").alias("rejected_text"))


def _diffs(cfg: Any, pairs: pl.DataFrame, backend: Backend | None) -> tuple[str, np.ndarray]:
    """Scorer id and chosen - rejected per pair (NaN where either score failed)."""
    if cfg.combines:
        raise ScorerCheckError("an ensemble combines scores already written; check each member scorer instead")
    n = pairs.height
    scorer = build_scorer(cfg, backend=backend)
    both = pl.concat([pairs.select(pl.col("prompt").alias("messages"), "constraints", "reference",
                                   pl.lit(None, pl.String).alias("finish_reason"), pl.col(c).alias("completion"))
                      for c in ("chosen_text", "rejected_text")])
    scorer.load()
    try:
        res = evaluate_frame(scorer, cfg, both)
    finally:
        scorer.close()
    s = np.array([r.score if r.ok else math.nan for r in res], dtype=np.float64)
    return scorer.id, s[:n] - s[n:]


def _pairwise(cfg: Any, pairs: pl.DataFrame, backend: Backend | None) -> dict:
    judge = build_scorer(cfg, backend=backend)
    judge.load()
    try:
        out = judge.compare(pairs["prompt"].to_list(), pairs["chosen_text"].to_list(), pairs["rejected_text"].to_list())
    finally:
        judge.close()
    readable = [j for j in out if j.failure is None]
    flips = [j for j in readable if j.verdict_ab != swap_verdict(j.verdict_ba)]
    correct = [j for j in readable if j.verdict == "A"]
    n = len(out)
    return {"scorer": judge.id, "n": n, "failed": n - len(readable),
            "accuracy": len(correct) / n if n else math.nan,
            "position_bias_rate": len(flips) / len(readable) if readable else math.nan,
            "first_position_rate": (sum(j.verdict_ab == "A" and j.verdict_ba == "A" for j in readable) / len(readable)
                                    if readable else math.nan),
            "tie_rate": sum(j.verdict == "tie" for j in readable) / n if n else math.nan}


def check_scorer(store: Store, scorer_cfg: Any, pairs_ref: TableRef | str, *, other: Any = None,
                 prompts: TableRef | str | None = None, backend: Backend | None = None) -> dict:
    """Accuracy of a scorer on labelled pairs (chosen should win); see the module docstring.
    `prompts` supplies constraints / references for rule scorers and critiques."""
    cfg = parse_scorer_config(scorer_cfg)
    ref = store.ref(pairs_ref)
    p_ref = store.ref(prompts) if prompts is not None else None
    needs = {"constraints", "references"} & set(cfg.inputs)
    if p_ref is None and needs:
        raise ScorerCheckError(f"{cfg.kind_name()} needs the prompts table (for their {' and '.join(sorted(needs))}); "
                               "pass --prompts NAME[@VERSION] (the prompts table the pairs came from)")
    pairs = _pairs_frame(store, ref, p_ref)
    if cfg.pairwise:
        result = _pairwise(cfg, pairs, backend)
    else:
        sid, d = _diffs(cfg, pairs, backend)
        ok = ~np.isnan(d)
        n = len(d)
        result = {"scorer": sid, "n": n, "failed": int((~ok).sum()),
                  "accuracy": float((d > 0).sum() / n) if n else math.nan,
                  "tie_rate": float((d == 0).sum() / n) if n else math.nan,
                  "mean_margin": float(d[ok].mean()) if ok.any() else math.nan}
        if other is not None:
            ocfg = parse_scorer_config(other)
            oid, od = _diffs(ocfg, pairs, None)
            both = ok & ~np.isnan(od)
            result["other"] = oid
            result["agreement"] = (float((np.sign(d[both]) == np.sign(od[both])).mean()) if both.any() else math.nan)
            result["other_accuracy"] = float((od > 0).sum() / n) if n else math.nan
    result["pairs"] = str(ref)
    return result


def require_accuracy(result: dict, minimum: float) -> None:
    """Raise ScorerCheckError unless result["accuracy"] >= minimum (the round runner's gate)."""
    acc = result.get("accuracy", math.nan)
    if not (isinstance(acc, float) and acc >= minimum):
        raise ScorerCheckError(
            f"scorer {result.get('scorer')!r} has accuracy {acc:.3f} on {result.get('pairs')} (n={result.get('n')}, "
            f"failed={result.get('failed')}), below the required {minimum:.3f}; use a better scorer or lower the "
            "minimum accuracy in the recipe")
