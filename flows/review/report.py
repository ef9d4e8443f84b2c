"""The judge-vs-human report: `review_report` (a dict), `format_report` (Markdown) and
`review_markdown` for the run report. Used by `prefmill review --report [--json]` and /report.

    rep = review_report(store, "demo.r1.pairs@0", reviews="demo.reviews")
    print(format_report(rep))
"""
from __future__ import annotations

import polars as pl

from filters.reviews import ReviewPolicy, agreement_report, comparison, reviewer_report, truth
from filters.text import as_text, word_count
from pipelines.reviews import Queue, QueueConfig, ReviewLog, build_queue
from pipelines.store import Store, TableRef


def review_report(store: Store, pairs: TableRef | str, *, reviews: str, policy: ReviewPolicy | None = None,
                  cfg: QueueConfig | None = None, queue: Queue | None = None) -> dict:
    """Judge-vs-human agreement per scorer (position and length bias), how people judged kept and
    dropped pairs, per-reviewer attention (left-position share, canaries passed), and judge
    accuracy on canaries. Reviews match this pairs version's candidates by comparison, so
    decisions made on an earlier version of the same pairs count too."""
    q = queue or build_queue(store, pairs, cfg)
    log = ReviewLog(store, reviews)
    cmp = q.candidates.select("comparison", "status")
    ver, rows = log.snapshot()
    rv = rows.with_columns(comparison()).join(cmp, on="comparison", how="semi")
    t = truth(q.candidates.filter(~pl.col("canary")).lazy(), rv.lazy(), policy=policy).collect()
    h = pl.col("human")
    by_status = t.join(cmp, on="comparison").group_by("status").agg(
        pl.len().alias("reviewed"), (h == "chosen").sum().alias("agree"), (h == "rejected").sum().alias("swap"),
        h.is_in(["tie", "both_bad"]).sum().alias("no_winner"), (h == "conflict").sum().alias("conflict"),
    ).sort("status")
    can = q.candidates.filter(pl.col("canary"))
    can_t = can.select("comparison", pl.lit("chosen").alias("human"),
                       word_count(as_text(can.schema, "chosen_text")).alias("chosen_len"),
                       word_count(as_text(can.schema, "rejected_text")).alias("rejected_len"))
    name = f"{reviews}@{ver}" if ver >= 0 else f"{reviews} (no decisions yet)"
    return {"pairs": str(q.ref), "reviews": name, "rows": rv.height,
            "decisions": dict(rv.group_by("decision").len().sort("decision").iter_rows()),
            "by_status": by_status.to_dicts(), "agreement": agreement_report(t.lazy(), q.signals.lazy()),
            "reviewers": reviewer_report(rv.lazy()) if rv.height else [],
            "canaries": agreement_report(can_t.lazy(), q.signals.lazy()) if can.height else None,
            "notes": q.notes}


def _r(rate: dict | None) -> str:
    if not rate or rate.get("rate") is None:
        return "— (n=0)"
    return f"{rate['rate']:.2f} [{rate['low']:.2f}, {rate['high']:.2f}] (n={rate['n']})"


def _signed(x: float | None) -> str:
    return "—" if x is None else f"{x:+.2f}"


def _scorers(block: dict) -> list[str]:
    lines = ["| scorer | kind | agreement with people | first-shown wins | agree when people's pick shown "
             "first / second | longer wins | length bias vs people |", "|---|---|---|---|---|---|---|"]
    for s in block["scorers"]:
        pos = s.get("position")
        first = _r(pos["first"]) if pos else "n/a (pointwise)"
        when = f"{_r(pos['agree_when_first'])} / {_r(pos['agree_when_second'])}" if pos else "n/a"
        lines.append(f"| {s['scorer']} | {s['kind']} | {_r(s['agreement'])} | {first} | {when} | "
                     f"{_r(s['length']['longer'])} | {_signed(s['length']['bias'])} |")
    return lines


def format_report(rep: dict) -> str:
    """Markdown: decisions, people vs the pipeline (kept / dropped), judges vs people, reviewers, canaries."""
    dec = ", ".join(f"{k} {v}" for k, v in rep["decisions"].items()) or "none yet"
    out = [f"# Review report: {rep['pairs']}", "",
           f"Reviews: {rep['reviews']} ({rep['rows']} rows on this queue; {dec}).", ""]
    out += [f"> {n}" for n in rep.get("notes", [])]
    out += ["## People vs the pipeline", "",
            "| in the pairs table | reviewed | people agree | people prefer the rejected | tie / both bad "
            "| reviewers disagree |", "|---|---|---|---|---|---|"]
    out += [f"| {s['status']} | {s['reviewed']} | {s['agree']} | {s['swap']} | {s['no_winner']} | {s['conflict']} |"
            for s in rep["by_status"]]
    ag = rep["agreement"]
    out += ["", f"## Judges vs people ({ag['n_clear']} comparisons people decided; 95% Wilson intervals)", ""]
    out += _scorers(ag)
    out += ["", f"People chose the longer answer in {_r(ag['human_longer'])} of decided comparisons with unequal "
            "lengths. A pairwise judge counts one verdict per order; a tie or an invalid score counts as a miss.",
            "", "## Reviewers", "",
            "| reviewer | decisions | skips | picked the left answer | canaries passed | median seconds |",
            "|---|---|---|---|---|---|"]
    for r in rep["reviewers"]:
        med = "—" if r["median_seconds"] is None else f"{r['median_seconds']:.1f}"
        out.append(f"| {r['reviewer']} | {r['decisions']} | {r['skips']} | {_r(r['left'])} | "
                   f"{_r(r['canaries'])} | {med} |")
    if rep.get("canaries") is not None:
        out += ["", "## Judges on canaries (known winner: the intact answer)", ""]
        out += (_scorers(rep["canaries"]) if rep["canaries"]["scorers"] else
                ["No scorer has scored the canaries' corrupted answers; plant them in a judge run to measure this."])
    return "\n".join(out) + "\n"


def review_markdown(store: Store, pairs: TableRef | str, *, reviews: str, cfg: QueueConfig | None = None) -> str:
    """The report section for the run report."""
    return format_report(review_report(store, pairs, reviews=reviews, cfg=cfg))
