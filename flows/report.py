"""Round reports: one self-contained HTML page (plots embedded as base64) and a Markdown twin
(plots under figures/) describing a run or the iterative loop, built from the store alone.

    prefmill report --store ./store --out reports/latest [--recipe quickstart]

Per round: the eval metrics (pass-rate, mean reward, win-rate vs the previous round, KL to the
reference, length), the reward distribution of the round's scored samples, the length drift of
the eval answers, pairs kept and rows dropped by reason, and the models trained. Rounds come
from an `round` column (evals, models) or from table names (`quickstart.r2.pairs`, `r2_pairs`).
Every section is optional: a store holding only a pairs table still gets a report.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import logging
import re
from pathlib import Path

import polars as pl

from flows.report_funnel import examples_section, funnel_section, lift_section
from flows.report_kit import Section
from flows.report_kit import fmt as _fmt
from flows.report_kit import plt_module as _plt
from flows.report_kit import png as _png

from pipelines.lineage import LINEAGE_TABLE
from pipelines.quarantine import QUARANTINE_TABLE
from pipelines.store import Store

log = logging.getLogger("prefmill.report")

METRICS = ("pass_rate", "mean_reward", "win_rate_vs_previous", "win_rate_vs_prev", "kl_to_reference", "kl_to_ref",
           "mean_length_tokens", "mean_length_words")
_ROUND = re.compile(r"(?:^|[._-])r(\d+)(?:[._-]|$)")


def round_of(table: str) -> int | None:
    """'quickstart.r2.pairs' -> 2; 'r1_scores_rm' -> 1; 'quickstart.pairs' -> None."""
    m = _ROUND.search(table)
    return int(m.group(1)) if m else None


def _tables_of(store: Store, kind: str, recipe: str | None) -> list[str]:
    return [t for t in store.tables() if (recipe is None or t.startswith(recipe + ".")) and store.kind(t) == kind]


def _concat(store: Store, names: list[str]) -> pl.DataFrame:
    frames = [store.read(n).with_columns(pl.lit(n).alias("_table")) for n in names]
    return pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()


def metrics_section(evals: pl.DataFrame, *, figures: bool = True) -> Section:
    latest = evals.sort("eval_id").unique(subset=["round", "model", "metric"], keep="last")
    present = set(latest.get_column("metric"))
    names = [m for m in METRICS if m in present] + sorted(present - set(METRICS))
    wide = latest.pivot(on="metric", index=["round", "model"], values="value").sort("round", "model")
    rows = [[_fmt(r["round"]), str(r["model"]), *(_fmt(r.get(m)) for m in names)] for r in wide.iter_rows(named=True)]
    text = "Held-out evaluation after each round (round 0 = the base model)."
    if not figures:
        return Section("Eval metrics by round", text, [(["round", "model", *names], rows)])
    plt = _plt()
    ncols = min(3, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.8 * nrows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, m in zip(axes.flat, names):
        d = latest.filter(pl.col("metric") == m).group_by("round").agg(pl.col("value").mean()).sort("round")
        rounds = d.get_column("round").to_list()
        ax.plot(rounds, d.get_column("value").to_list(), marker="o")
        ax.set_xticks(rounds)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("round")
    return Section("Eval metrics by round", text, [(["round", "model", *names], rows)], [("metrics", _png(fig))])


def reward_section(scores: pl.DataFrame, *, figures: bool = True) -> Section:
    d = scores.with_columns(pl.col("_table").map_elements(round_of, return_dtype=pl.Int64).alias("round"))
    d = d.filter(pl.col("score").is_not_null())
    by = d.group_by("round", "scorer").agg(pl.len().alias("n"), pl.col("score").mean().alias("mean"),
                                           pl.col("score").median().alias("median"), pl.col("score").std().alias("std"))
    by = by.sort("round", "scorer", nulls_last=False)
    rows = [[_fmt(r["round"]), r["scorer"], _fmt(r["n"]), _fmt(r["mean"]), _fmt(r["median"]), _fmt(r["std"])]
            for r in by.iter_rows(named=True)]
    table = [(["round", "scorer", "n", "mean", "median", "std"], rows)]
    text = "Scores of the samples generated in each round, all scorers pooled in the plot."
    if not figures:
        return Section("Reward distribution", text, table)
    plt = _plt()
    groups = [(f"r{k}" if k is not None else "-", d.filter(pl.col("round").eq_missing(k)).get_column("score").to_list())
              for k in sorted(set(d.get_column("round").to_list()), key=lambda x: -1 if x is None else x)]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if groups:
        ax.boxplot([g for _, g in groups], tick_labels=[n for n, _ in groups])
    ax.set_title("Reward of scored samples per round")
    ax.set_ylabel("score")
    return Section("Reward distribution", text, table, [("rewards", _png(fig))])


def length_section(responses: pl.DataFrame, model_round: dict[str, int], *, figures: bool = True) -> Section:
    d = responses.with_columns(pl.col("policy").replace_strict(model_round, default=None, return_dtype=pl.Int64).alias("round"))
    d = d.filter(pl.col("round").is_not_null() & pl.col("completion_tokens").is_not_null())
    by = d.group_by("round").agg(pl.len().alias("n"), pl.col("completion_tokens").mean().alias("mean"),
                                 pl.col("completion_tokens").quantile(0.9).alias("p90")).sort("round")
    rows = [[_fmt(r["round"]), _fmt(r["n"]), _fmt(float(r["mean"])), _fmt(float(r["p90"]))] for r in by.iter_rows(named=True)]
    table = [(["round", "answers", "mean tokens", "p90 tokens"], rows)]
    if not figures:
        return Section("Length drift", "Length of the held-out answers of each round's model.", table)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    rounds = by.get_column("round").to_list()
    if rounds:
        ax.boxplot([d.filter(pl.col("round") == k).get_column("completion_tokens").to_list() for k in rounds],
                   tick_labels=[f"r{k}" for k in rounds])
    ax.set_title("Eval answer length per round")
    ax.set_ylabel("tokens")
    return Section("Length drift", "Length of the held-out answers of each round's model.", table,
                   [("lengths", _png(fig))])


def _latest_runs(lineage: pl.DataFrame) -> dict[str, str]:
    """table -> fingerprint of its newest completion record."""
    if not lineage.height:
        return {}
    last = lineage.sort("version").group_by("table").agg(pl.col("fingerprint").last())
    return dict(last.iter_rows())


def pairs_section(pairs: pl.DataFrame, quarantine: pl.DataFrame, lineage: pl.DataFrame, *,
                  figures: bool = True) -> Section:
    """Kept rows of each pairs table (latest version) and the drops of the stage run that made it
    (all quarantine rows of the table when no completion record names the run)."""
    kept = pairs.group_by("_table").agg(pl.len().alias("kept"),
                                        (pl.col("chosen_score") - pl.col("rejected_score")).mean().alias("margin"))
    runs = _latest_runs(lineage)
    drops = pl.DataFrame(schema={"table": pl.String, "reason": pl.String, "len": pl.UInt32})
    if quarantine.height:
        q = quarantine.filter(pl.col("table").is_in(kept.get_column("_table").implode()))
        q = q.filter(pl.col("table").replace_strict(runs, default=None).is_null()
                     | (pl.col("run") == pl.col("table").replace_strict(runs, default=None)))
        drops = q.group_by("table", "reason").len()
    reasons = sorted(set(drops.get_column("reason").to_list()))
    rows, bars = [], []
    for t, n, margin in sorted(kept.iter_rows(), key=lambda r: (round_of(r[0]) or 0, r[0])):
        by = {r: int(c) for tt, r, c in drops.iter_rows() if tt == t}
        rows.append([t, _fmt(round_of(t)), str(n), _fmt(margin), *(str(by.get(r, 0)) for r in reasons)])
        bars.append((t, n, by))
    table = [(["table", "round", "kept", "mean margin", *[f"dropped: {r}" for r in reasons]], rows)]
    text = "Rows of each pairs table and the rows its stage quarantined, by reason."
    if not figures:
        return Section("Pairs kept and dropped", text, table)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(bars)), 3.2))
    x = list(range(len(bars)))
    ax.bar(x, [b[1] for b in bars], label="kept")
    bottom = [b[1] for b in bars]
    for r in reasons:
        h = [b[2].get(r, 0) for b in bars]
        ax.bar(x, h, bottom=bottom, label=f"dropped: {r}")
        bottom = [a + b for a, b in zip(bottom, h)]
    ax.set_xticks(x, [b[0] for b in bars], rotation=15, fontsize=8)
    ax.set_ylabel("rows")
    ax.legend(fontsize=7)
    return Section("Pairs kept and dropped", text, table, [("pairs", _png(fig))])


def drops_section(quarantine: pl.DataFrame) -> Section:
    by = quarantine.group_by("table", "stage", "reason").len().sort("table", "stage", "reason")
    rows = [[t, _fmt(round_of(t)), s, r, str(n)] for t, s, r, n in by.iter_rows()]
    return Section("All drops by reason", "Every quarantined row (all runs), by the table its stage wrote, stage and reason.",
                   [(["table", "round", "stage", "reason", "rows"], rows)])


def models_section(models: pl.DataFrame) -> Section:
    cols = ["round", "name", "trainer", "base_model", "reference_model", "dataset"]
    rows = [[_fmt(r[c]) for c in cols] for r in models.sort("round", "name", nulls_last=False).iter_rows(named=True)]
    return Section("Models", "Trained model versions registered in the store.", [(cols, rows)])


def lineage_section(lineage: pl.DataFrame) -> Section:
    cols = ["table", "version", "stage", "rows_in", "rows_out", "wall_s", "created_at"]
    rows = [[_fmt(r[c]) for c in cols] for r in lineage.sort("created_at", "table").iter_rows(named=True)]
    return Section("Stage runs", "Completion records (lineage) in the order they were written.", [(cols, rows)])


def recipes_in(store: Store) -> list[str]:
    """Recipe names of a store: the prefixes of its dotted table names (`quickstart.r1.pairs`)."""
    return sorted({t.split(".", 1)[0] for t in store.tables() if "." in t})


def _last_eval_answers(store: Store, recipe: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    answers = sorted((t for t in _tables_of(store, "samples", recipe) if t.endswith(".eval_responses")),
                     key=lambda t: round_of(t) or 0)
    prompts = f"{recipe}.prompts"
    if not answers or not store.exists(prompts):
        return pl.DataFrame(), pl.DataFrame()
    return store.read(answers[-1]), store.read(prompts)


def build_sections(store: Store, *, recipe: str | None = None, figures: bool = True) -> list[Section]:
    """The sections of one recipe's report; with recipe=None, one group of sections per recipe
    in the store (metrics are never pooled across recipes)."""
    if recipe is None:
        names = recipes_in(store)
        if len(names) > 1:
            out: list[Section] = []
            for name in names:
                group = build_sections(store, recipe=name, figures=figures)
                for sec in group:
                    sec.title = f"{name}: {sec.title}"
                out += group
            return out
        recipe = names[0] if names else None
    evals = _concat(store, _tables_of(store, "evals", recipe))
    models = _concat(store, _tables_of(store, "models", recipe))
    scores = _concat(store, _tables_of(store, "scores", recipe))
    pairs = _concat(store, _tables_of(store, "pairs", recipe))
    responses = _concat(store, [t for t in _tables_of(store, "samples", recipe) if "eval_responses" in t])
    quarantine = store.read(QUARANTINE_TABLE) if store.exists(QUARANTINE_TABLE) else pl.DataFrame()
    lineage = store.read(LINEAGE_TABLE) if store.exists(LINEAGE_TABLE) else pl.DataFrame()
    if recipe is not None:
        quarantine = quarantine.filter(pl.col("table").str.starts_with(recipe + ".")) if quarantine.height else quarantine
        lineage = lineage.filter(pl.col("table").str.starts_with(recipe + ".")) if lineage.height else lineage
        if store.exists("models"):
            m = store.read("models")
            models = m.filter(pl.col("name").str.starts_with(recipe + "-")) if m.height else m
    out = []
    if evals.height:
        out.append(metrics_section(evals, figures=figures))
        lift = lift_section(evals)
        if lift is not None:
            out.append(lift)
    funnel = funnel_section(lineage, recipe=recipe)
    if funnel is not None:
        out.append(funnel)
    if scores.height:
        out.append(reward_section(scores, figures=figures))
    if responses.height and evals.height:
        model_round = {m: int(r) for m, r in evals.select("model", "round").unique().iter_rows() if r is not None}
        if "_table" in responses.columns:   # rK.eval_responses: the round is in the name; one shared table: the policy
            by_name = pl.col("_table").map_elements(round_of, return_dtype=pl.Int64)
            by_policy = pl.col("policy").replace_strict(model_round, default=None, return_dtype=pl.Int64)
            responses = responses.with_columns(pl.coalesce(by_name, by_policy).cast(pl.String).alias("policy"))
        out.append(length_section(responses, {str(v): v for v in model_round.values()}, figures=figures))
    if recipe is not None:
        answers, prompts = _last_eval_answers(store, recipe)
        ex = examples_section(answers, prompts)
        if ex is not None:
            out.append(ex)
    if pairs.height or (quarantine.height and _tables_of(store, "pairs", recipe)):
        out.append(pairs_section(pairs, quarantine, lineage, figures=figures))
    if recipe is not None and store.exists(f"{recipe}.reviews") and _tables_of(store, "pairs", recipe):
        out.append(_reviews_section(store, recipe))
    if quarantine.height:
        out.append(drops_section(quarantine))
    if models.height:
        out.append(models_section(models))
    if lineage.height:
        out.append(lineage_section(lineage))
    return out


def _reviews_section(store: Store, recipe: str) -> Section:
    from flows.review.report import review_markdown

    last = sorted(_tables_of(store, "pairs", recipe), key=lambda t: round_of(t) or 0)[-1]
    text = review_markdown(store, last, reviews=f"{recipe}.reviews")
    return Section("Human reviews: agreement with the judges", text)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    return "\n".join(["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(map(esc, r)) + " |" for r in rows)])


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
       "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
       "th{background:#f3f3f3}img{max-width:100%;display:block;margin:.6em 0}")


def write_report(store: Store, out: str | Path, *, recipe: str | None = None, title: str | None = None,
                 figures: bool = True) -> Path:
    """Write report.html (self-contained) and report.md (+ figures/) into `out`; return report.html."""
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    sections = build_sections(store, recipe=recipe, figures=figures)
    title = title or f"prefmill report: {recipe or 'store'} {store.root}"
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    listing = [[t, str(store.version(t)), store.kind(t)] for t in store.tables() if recipe is None or t.startswith(recipe + ".")]
    sections.append(Section("Tables", f"Latest versions at {stamp}.", [(["table", "version", "kind"], listing)]))
    if len(sections) == 1:
        sections.insert(0, Section("Nothing to report yet", "The store holds no evals, scores, pairs, models or drops."))
    md, body = [f"# {title}", "", f"Generated {stamp} from `{store.root}`."], [f"<h1>{html.escape(title)}</h1>",
                                                                              f"<p>Generated {stamp} from <code>{html.escape(str(store.root))}</code>.</p>"]
    for s in sections:
        md += ["", f"## {s.title}", "", s.text]
        body += [f"<h2>{html.escape(s.title)}</h2>", f"<p>{html.escape(s.text)}</p>"]
        for header, rows in s.tables:
            md += ["", _md_table(header, rows)]
            body.append(_html_table(header, rows))
        for name, png in s.figures:
            (out / "figures" / f"{name}.png").write_bytes(png)
            md += ["", f"![{name}](figures/{name}.png)"]
            body.append(f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">')
    (out / "report.md").write_text("\n".join(md) + "\n")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>"
    (out / "report.html").write_text(page)
    log.info("report written to %s (%d sections)", out / "report.html", len(sections))
    return out / "report.html"
