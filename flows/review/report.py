"""The judge-vs-human report as Markdown, for `prefmill review --report`, the /report page and the
run report (flows/report.py can call `review_markdown(store, pairs, reviews=...)`).

    text = format_report(review_report(store, "demo.r1.pairs@0", reviews="demo.reviews"))
"""
from __future__ import annotations

from pipelines.reviews import QueueConfig, review_report
from pipelines.store import Store, TableRef


def _r(rate: dict | None) -> str:
    if not rate or rate.get("rate") is None:
        return "— (n=0)"
    return f"{rate['rate']:.2f} [{rate['low']:.2f}, {rate['high']:.2f}] (n={rate['n']})"


def _signed(x: float | None) -> str:
    return "—" if x is None else f"{x:+.2f}"


def _scorers(block: dict) -> list[str]:
    lines = ["| scorer | kind | agreement with people | first-shown wins | agree when people's pick shown first / second "
             "| longer wins | length bias vs people |", "|---|---|---|---|---|---|---|"]
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
    out = [f"# Review report: {rep['pairs']}", "", f"Reviews: {rep['reviews']} ({rep['rows']} rows on this queue; {dec}).",
           ""]
    out += [f"> {n}" for n in rep.get("notes", [])]
    out += ["## People vs the pipeline", "", "| in the pairs table | reviewed | people agree | people prefer the rejected "
            "| tie / both bad | reviewers disagree |", "|---|---|---|---|---|---|"]
    for s in rep["by_status"]:
        out.append(f"| {s['status']} | {s['reviewed']} | {s['agree']} | {s['swap']} | {s['no_winner']} | {s['conflict']} |")
    ag = rep["agreement"]
    out += ["", f"## Judges vs people ({ag['n_clear']} comparisons people decided; 95% Wilson intervals)", ""]
    out += _scorers(ag)
    out += ["", f"People chose the longer answer in {_r(ag['human_longer'])} of decided comparisons with unequal lengths. "
            "A pairwise judge counts one verdict per order; a tie or an invalid score counts as a miss.", "",
            "## Reviewers", "", "| reviewer | decisions | skips | picked the left answer | canaries passed | median seconds |",
            "|---|---|---|---|---|---|"]
    for r in rep["reviewers"]:
        med = "—" if r["median_seconds"] is None else f"{r['median_seconds']:.1f}"
        out.append(f"| {r['reviewer']} | {r['decisions']} | {r['skips']} | {_r(r['left'])} | {_r(r['canaries'])} | {med} |")
    if rep.get("canaries") is not None:
        out += ["", "## Judges on canaries (known winner: the intact answer)", ""]
        out += (_scorers(rep["canaries"]) if rep["canaries"]["scorers"] else
                ["No scorer has scored the canaries' corrupted answers; plant them in a judge run to measure this."])
    return "\n".join(out) + "\n"


def review_markdown(store: Store, pairs: TableRef | str, *, reviews: str, cfg: QueueConfig | None = None) -> str:
    """The report section for the run report."""
    return format_report(review_report(store, pairs, reviews=reviews, cfg=cfg))
