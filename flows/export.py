"""Export a pinned preference table version as a dataset TRL and `datasets` load unchanged.

    prefmill export quickstart.r2.pairs@7 --format parquet --out out/pairs --split test=0.05

Rows keep TRL's conversational columns first (`pairs`: prompt, chosen, rejected; `unpaired`:
prompt, completion, label; `sft`: prompt, completion), then scores and keys. Splits are
deterministic: a prompt's hash (with the seed) picks its split, so every pair of one prompt
lands in the same split and re-exporting the same version gives the same files. The folder
gets a dataset card (README.md: counts, drops by reason, histograms, the lineage chain) and
export.json; everything is written into a temporary folder beside --out and renamed into
place last, so --out either holds a complete export or nothing new.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from flows.cli import UserError
from pipelines.keys import content_hash
from pipelines.schemas import get_schema
from pipelines.lineage import LINEAGE_TABLE
from pipelines.quarantine import QUARANTINE_TABLE
from pipelines.store import Store, TableRef

log = logging.getLogger("prefmill.export")

Format = Literal["hf", "parquet", "jsonl"]
FORMATS: tuple[str, ...] = ("hf", "parquet", "jsonl")
def _stepwise(frame: pl.DataFrame) -> pl.DataFrame:
    from filters.steps import stepwise_rows

    return stepwise_rows(frame).collect()


def _pair_figures(tmp: Path, frame: pl.DataFrame) -> None:
    margin = frame.select((pl.col("chosen_score") - pl.col("rejected_score")).alias("m")).get_column("m").drop_nulls()
    _histogram(tmp / "figures/score.png", {"chosen - rejected": margin.to_list()}, title="Score margin", xlabel="margin")
    lens = frame.select(_last_content("chosen"), _last_content("rejected"))
    _histogram(tmp / "figures/length.png", {c: lens.get_column(c).drop_nulls().to_list() for c in ("chosen", "rejected")},
               title="Response length", xlabel="characters")


def _completion_figures(tmp: Path, frame: pl.DataFrame) -> None:
    _histogram(tmp / "figures/score.png", {"score": frame.get_column("score").drop_nulls().to_list()}, title="Score",
               xlabel="score")
    lens = frame.select(_last_content("completion")).get_column("completion").drop_nulls()
    _histogram(tmp / "figures/length.png", {"completion": lens.to_list()}, title="Completion length", xlabel="characters")


def _step_figures(tmp: Path, frame: pl.DataFrame) -> None:
    good = frame.select(pl.col("labels").list.eval(pl.element().cast(pl.Float64)).list.mean().alias("g"))
    _histogram(tmp / "figures/score.png", {"share of good steps": good.get_column("g").drop_nulls().to_list()},
               title="Good steps per answer", xlabel="share")
    _histogram(tmp / "figures/length.png", {"steps": frame.get_column("completions").list.len().to_list()},
               title="Steps per answer", xlabel="steps")


@dataclass(frozen=True)
class ExportKind:
    """How one table kind is exported: TRL's columns first, how rows become TRL rows, the card's
    figures and tags."""

    columns: tuple[str, ...]
    tag: str
    figures: Callable[[Path, pl.DataFrame], None]
    to_rows: Callable[[pl.DataFrame], pl.DataFrame] | None = None


EXPORT_KINDS: dict[str, ExportKind] = {
    "pairs": ExportKind(("prompt", "chosen", "rejected"), "dpo", _pair_figures),
    "unpaired": ExportKind(("prompt", "completion", "label"), "kto", _completion_figures),
    "sft": ExportKind(("prompt", "completion"), "sft", _completion_figures),
    "step_labels": ExportKind(("prompt", "completions", "labels"), "prm, stepwise-supervision", _step_figures,
                              to_rows=_stepwise),     # TRL's stepwise supervision (PRM) format
}
TRL_COLUMNS: dict[str, tuple[str, ...]] = {k: v.columns for k, v in EXPORT_KINDS.items()}
_SPLIT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True)
class ExportConfig:
    """What to export and where."""

    source: str = field(metadata={"help": "table to export, NAME or NAME@VERSION (latest when no version)"})
    out: Path = field(metadata={"help": "output folder; must be absent or empty unless overwrite"})
    format: Format = field(default="hf", metadata={"help": "hf = DatasetDict.save_to_disk; parquet/jsonl = one file per split under data/"})
    splits: tuple[tuple[str, float], ...] = field(default=(), metadata={"help": "held-out splits as (name, fraction); the rest is 'train'"})
    seed: int = field(default=0, metadata={"help": "salt of the split hash; another seed gives another split"})
    overwrite: bool = field(default=False, metadata={"help": "replace a non-empty output folder"})

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise UserError(f"unknown export format {self.format!r}; expected one of {', '.join(FORMATS)}")
        check_splits(self.splits)


@dataclass(frozen=True)
class ExportResult:
    out: Path = field(metadata={"help": "the export folder"})
    ref: TableRef = field(metadata={"help": "the exported table version"})
    kind: str = field(metadata={"help": "its table kind"})
    counts: dict[str, int] = field(metadata={"help": "rows per split"})


def parse_split(text: str) -> tuple[str, float]:
    """'test=0.05' -> ('test', 0.05)."""
    name, sep, frac = text.partition("=")
    if not sep or not re.fullmatch(r"\s*(\d+\.?\d*|\.\d+)([eE]-?\d+)?\s*", frac):
        raise UserError(f"bad --split {text!r}; write NAME=FRACTION, e.g. --split test=0.05")
    return name.strip(), float(frac)


def check_splits(splits: tuple[tuple[str, float], ...]) -> None:
    names = [n for n, _ in splits]
    for name, frac in splits:
        if not _SPLIT_NAME.match(name) or name == "train":
            raise UserError(f"bad split name {name!r}; use lowercase letters/digits/_ and not 'train' (train is the rest), e.g. test")
        if not 0 < frac < 1:
            raise UserError(f"split {name}={frac}: the fraction must be between 0 and 1, e.g. {name}=0.05")
    if len(set(names)) != len(names):
        raise UserError(f"split names repeat in {', '.join(names)}; give each split once")
    if sum(f for _, f in splits) >= 1:
        raise UserError(f"split fractions sum to {sum(f for _, f in splits):.3g}; they must leave something for train (< 1)")


def split_of(prompt_ids: pl.Series, splits: tuple[tuple[str, float], ...], *, seed: int) -> pl.Series:
    """Assign each prompt id a split name by a salted content hash (uniform in [0, 1))."""
    bounds, acc = [], 0.0
    for name, frac in splits:
        acc += frac
        bounds.append((acc, name))

    def pick(pid: str) -> str:
        u = int(content_hash("split", int(seed), pid)[:13], 16) / float(16 ** 13)
        return next((name for edge, name in bounds if u < edge), "train")

    return pl.Series("split", [pick(p) for p in prompt_ids.to_list()], dtype=pl.String)


def prepare(frame: pl.DataFrame, kind: str) -> pl.DataFrame:
    """TRL columns first, then scores and keys; rows in key order (stable across runs). Step
    labels become TRL's stepwise-supervision rows (prompt text, completions = steps, labels)."""
    spec = EXPORT_KINDS[kind]
    if spec.to_rows is not None:
        frame = spec.to_rows(frame)
    first = list(spec.columns)
    key = get_schema(kind).key
    rest = [c for c in frame.columns if c not in first]
    return frame.select(first + rest).sort(key)


def lineage_chain(store: Store, ref: TableRef) -> list[dict]:
    """Completion records of `ref` and, recursively, of every parent (breadth first). A version
    with no record (written outside a stage) appears as {"ref": ..., "record": None}."""
    recs = store.read(LINEAGE_TABLE) if store.exists(LINEAGE_TABLE) else pl.DataFrame()
    chain, seen, todo = [], set(), [str(ref)]
    while todo:
        cur = todo.pop(0)
        if cur in seen:
            continue
        seen.add(cur)
        name, _, ver = cur.partition("@")
        hit = recs.filter((pl.col("table") == name) & (pl.col("version") == int(ver))) if ver.isdigit() and recs.height else recs
        if not ver.isdigit() or hit.is_empty():
            chain.append({"ref": cur, "record": None})
            continue
        r = hit.row(-1, named=True)
        chain.append({"ref": cur, "record": {
            "stage": r["stage"], "parents": list(r["parents"] or []), "rows_in": r["rows_in"], "rows_out": r["rows_out"],
            "drops": json.loads(r["drops"] or "{}"), "models": json.loads(r["models"] or "{}"),
            "git_sha": r["git_sha"], "created_at": r["created_at"], "fingerprint": r["fingerprint"]}})
        todo.extend(r["parents"] or [])
    return chain


def drops_by_reason(store: Store, ref: TableRef, chain: list[dict]) -> list[tuple[str, str, str, int]]:
    """(table@version, stage, reason, count) over the whole chain; when the exported version has
    no completion record, its quarantine rows (by table name) stand in."""
    rows = [(c["ref"], c["record"]["stage"], reason, int(n))
            for c in chain if c["record"] for reason, n in sorted(c["record"]["drops"].items())]
    if chain and chain[0]["record"] is None and store.exists(QUARANTINE_TABLE):
        q = store.read(QUARANTINE_TABLE, columns=["table", "stage", "reason"]).filter(pl.col("table") == ref.name)
        for stage, reason, n in q.group_by("stage", "reason").len().sort("stage", "reason").iter_rows():
            rows.append((ref.name, stage, reason, int(n)))
    return rows


def _last_content(col: str) -> pl.Expr:
    return pl.col(col).list.last().struct.field("content").str.len_chars().alias(col)


def _histogram(path: Path, series: dict[str, list[float]], *, title: str, xlabel: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    every = [v for values in series.values() for v in values]
    bins = np.histogram_bin_edges(every, bins=min(40, max(5, len(every) // 8))) if every else 10
    for label, values in series.items():
        if values:
            ax.hist(values, bins=bins, alpha=0.6, label=f"{label} (n={len(values)})")
    if not any(series.values()):
        ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    if any(series.values()):
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_card(tmp: Path, *, store: Store, ref: TableRef, kind: str, frame: pl.DataFrame, manifest: dict) -> None:
    """README.md (dataset card) plus figures/*.png."""
    (tmp / "figures").mkdir()
    EXPORT_KINDS[kind].figures(tmp, frame)
    fmt, splits = manifest["format"], manifest["splits"]
    head = ["---", f"tags: [prefmill, trl, {EXPORT_KINDS[kind].tag}]"]
    if fmt != "hf":
        head += ["configs:", "- config_name: default", "  data_files:"]
        head += [f"  - split: {n}\n    path: {s['path']}" for n, s in splits.items()]
    head.append("---")
    load = "datasets.load_from_disk(THIS_FOLDER)" if fmt == "hf" else "datasets.load_dataset(THIS_FOLDER)"
    lines = head + [f"# {ref}", "", f"Exported by prefmill from table version `{ref}` (kind `{kind}`) as `{fmt}`.",
                    f"Columns: {', '.join(manifest['columns'])}. TRL reads the conversational columns unchanged.", "",
                    f"Load: `{load}`", "", "## Counts", "", "| split | rows | prompts |", "|---|---|---|"]
    lines += [f"| {n} | {s['rows']} | {s['prompts']} |" for n, s in splits.items()]
    req = manifest["requested_splits"]
    lines += ["", f"Split by a salted hash of prompt_id (seed {manifest['seed']}; requested {req or 'none'}): "
              "all rows of a prompt share one split.", "", "## Drops by reason", ""]
    drops = drops_by_reason(store, ref, manifest["lineage"])
    lines += (["| table | stage | reason | rows |", "|---|---|---|---|"] + [f"| {t} | {s} | {r} | {n} |" for t, s, r, n in drops]
              if drops else ["No row was quarantined on the way to this version. Rows in and out of a stage differ "
                             "only where it combines rows (n samples of a prompt into one pair, pairs of a prompt "
                             "into one export row); see the lineage below."])
    lines += ["", "## Distributions", "", "![scores](figures/score.png)", "", "![lengths](figures/length.png)", "",
              "## Lineage", ""]
    for c in manifest["lineage"]:
        r = c["record"]
        if r is None:
            lines.append(f"- `{c['ref']}`: no completion record (written outside a prefmill stage)")
            continue
        parents = ", ".join(f"`{p}`" for p in r["parents"]) or "none"
        models = ", ".join(f"{k}={v}" for k, v in sorted(r["models"].items())) if isinstance(r["models"], dict) else ""
        lines.append(f"- `{c['ref']}` ← stage **{r['stage']}** from {parents}; rows {r['rows_in']} in / {r['rows_out']} out;"
                     f" git {r['git_sha']}; {r['created_at']}" + (f"; models {models}" if models else ""))
    (tmp / "README.md").write_text("\n".join(lines) + "\n")


def _write_splits(parts: dict[str, pl.DataFrame], tmp: Path, fmt: str) -> dict[str, str]:
    files: dict[str, str] = {}
    if fmt == "hf":
        import datasets

        dd = datasets.DatasetDict({name: datasets.Dataset(df.to_arrow()) for name, df in parts.items()})
        dd.save_to_disk(str(tmp))
        return {name: name for name in parts}
    (tmp / "data").mkdir()
    for name, df in parts.items():
        rel = f"data/{name}.parquet" if fmt == "parquet" else f"data/{name}.jsonl"
        (df.write_parquet if fmt == "parquet" else df.write_ndjson)(tmp / rel)
        files[name] = rel
    return files


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"export folder {str(out)!r} is a file; pass a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"export folder {str(out)!r} exists and is not empty; pass --overwrite to replace it or choose another folder")


def _swap_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old)


def export(store: Store, cfg: ExportConfig) -> ExportResult:
    """Write `cfg.source` to `cfg.out`; return where it went and the row count per split."""
    ref = store.ref(cfg.source)
    kind = store.kind(ref.name)
    if kind not in TRL_COLUMNS:
        raise UserError(f"table {ref.name!r} holds {kind!r} rows; export takes a table of kind {', '.join(TRL_COLUMNS)}")
    out = Path(cfg.out)
    _check_out(out, cfg.overwrite)
    frame = prepare(store.read(ref), kind)
    frame = frame.with_columns(split_of(frame.get_column("prompt_id"), cfg.splits, seed=cfg.seed))
    parts = {name: frame.filter(pl.col("split") == name).drop("split") for name in ["train", *(n for n, _ in cfg.splits)]}
    for name in [n for n, df in parts.items() if df.is_empty() and n != "train"]:
        log.warning("split %r of %s is empty (%d rows in all); it is left out", name, ref, frame.height)
        del parts[name]
    counts = {name: df.height for name, df in parts.items()}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files = _write_splits(parts, tmp, cfg.format)
        manifest = {
            "source": str(ref), "kind": kind, "format": cfg.format, "seed": cfg.seed,
            "splits": {name: {"rows": counts[name], "prompts": parts[name].get_column("prompt_id").n_unique(),
                              "path": files[name]} for name in parts},
            "requested_splits": dict(cfg.splits), "columns": frame.drop("split").columns,
            "lineage": lineage_chain(store, ref),
        }
        write_card(tmp, store=store, ref=ref, kind=kind, frame=frame, manifest=manifest)
        (tmp / "export.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        _check_out(out, cfg.overwrite)  # someone may have written there meanwhile
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s (%s) to %s: %s", ref, kind, out, counts)
    return ExportResult(out=out, ref=ref, kind=kind, counts=counts)


def export_dataset(store: Store, source: str | TableRef, *, fmt: Format = "hf", out: str | Path,
                   split: dict[str, float] | None = None, seed: int = 0, overwrite: bool = False) -> Path:
    """One-call form for flows (the recipe's `export:` section); returns the export folder."""
    cfg = ExportConfig(source=str(source), out=Path(out), format=fmt, splits=tuple((split or {}).items()),
                       seed=seed, overwrite=overwrite)
    return export(store, cfg).out
