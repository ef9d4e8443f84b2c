"""Prompt stages without a model: seed import, verifiable-constraint attachment, dedup.

    import_stage(store, SeedImportConfig(path="recipes/data/seed_prompts.jsonl"), output="seed_prompts")
    constraints_stage(store, ConstraintConfig(fraction=1.0), prompts="seed_prompts", output="if_prompts")
    dedup_stage(store, PromptDedupConfig(), prompts="if_prompts", output="prompts")

Seeds come from JSONL, Parquet or a HF dataset saved with `save_to_disk` (read with
datasets.load_from_disk), with a column mapping; a missing or mistyped column is a one-line
SchemaError naming the column, what is there, and the config field to set. Empty prompts and
duplicates go to quarantine with a reason.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from filters import instructions
from filters.dedup import dedup
from filters.drops import DROP
from pipelines import keys
from pipelines.prompts import prompt_row, prompts_frame
from pipelines.schemas import SchemaError
from pipelines.driver import Identity
from pipelines.frames import drive_frame
from pipelines.store import Store, TableRef

_CHUNK = 1000


class SeedImportConfig(BaseModel):
    """Where seed prompts come from and which columns hold what."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="JSONL file, Parquet file, or folder of a HF dataset saved with save_to_disk")
    format: Literal["auto", "jsonl", "parquet", "hf_disk"] = Field("auto", description="auto: by suffix "
                                                                    "(.jsonl/.json, .parquet) or folder -> hf_disk")
    hf_split: str = Field("train", description="split to read when the HF folder holds a DatasetDict")
    prompt_column: str | None = Field("prompt", description="column with the prompt text (or None with messages_column)")
    messages_column: str | None = Field(None, description="column with chat messages [{role, content}] instead of text")
    reference_column: str | None = Field(None, description="column with a gold answer (used by SPIN)")
    task_type_column: str | None = Field(None, description="column with a task type; else task_type")
    task_type: str | None = Field(None, description="task type for every row when no task_type_column")
    system_prompt: str | None = Field(None, description="system message prepended to every prompt")
    limit: int | None = Field(None, ge=1, description="read at most this many rows")
    cap: int | None = Field(None, ge=1, description="keep at most this many prompts, every split keeping its share "
                            "(`prefmill run --limit`: later stages then work on a few prompts only)")
    min_heldout: int = Field(0, ge=0, description="with cap: keep at least this many held-out prompts")
    heldout_fraction: float = Field(0.1, ge=0, le=1, description="fraction of prompts assigned to the held-out split")
    validation_fraction: float = Field(0.0, ge=0, le=1, description="fraction assigned to the validation split")


def _read(cfg: SeedImportConfig) -> pl.DataFrame:
    p = Path(cfg.path)
    if not p.exists():
        raise FileNotFoundError(f"seed path {cfg.path!r} does not exist; set path to a JSONL/Parquet file or a "
                                "HF dataset folder")
    fmt = cfg.format
    if fmt == "auto":
        fmt = "hf_disk" if p.is_dir() else {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}.get(p.suffix, "")
        if not fmt:
            raise SchemaError(f"cannot tell the format of {cfg.path!r} from its suffix; set format to jsonl, parquet or hf_disk")
    if fmt == "jsonl":
        if not any(line.strip() for line in p.open(encoding="utf-8", errors="replace")):
            raise SchemaError(f"seed file {cfg.path!r} has no rows; add prompts (one JSON object per line)")
        try:
            return pl.read_ndjson(p, infer_schema_length=None)
        except pl.exceptions.ComputeError as e:
            raise SchemaError(f"seed file {cfg.path!r} is not valid JSONL ({str(e).splitlines()[0]}); "
                              "write one JSON object per line") from None
    if fmt == "parquet":
        return pl.read_parquet(p)
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(p))
    if isinstance(ds, DatasetDict):
        if cfg.hf_split not in ds:
            raise SchemaError(f"{cfg.path!r} has no split {cfg.hf_split!r}; set hf_split to one of {', '.join(ds)}")
        ds = ds[cfg.hf_split]
    return pl.from_arrow(ds.data.table)


def _column(df: pl.DataFrame, name: str, field: str, path: str, ok: tuple[type, ...]) -> pl.Series:
    if name not in df.columns:
        raise SchemaError(f"seed file {path!r} has no column {name!r} ({field}); columns: {', '.join(df.columns)}; "
                          f"set {field} to one of them")
    s = df.get_column(name)
    if not isinstance(s.dtype, ok) and s.dtype != pl.Null:
        raise SchemaError(f"seed column {name!r} ({field}) has dtype {s.dtype}; expected "
                          f"{' or '.join(t.__name__ for t in ok)}; point {field} at another column")
    return s


def check_seeds(cfg: SeedImportConfig) -> pl.DataFrame:
    """Read the seed file and check its columns; raise a one-line SchemaError if it cannot be
    imported (missing file, unknown format, no rows, missing or mistyped columns)."""
    if (cfg.prompt_column is None) == (cfg.messages_column is None):
        raise SchemaError("set exactly one of prompt_column and messages_column in the seed config")
    df = _read(cfg)
    if cfg.limit:
        df = df.head(cfg.limit)
    if df.height == 0:
        raise SchemaError(f"seed file {cfg.path!r} has no rows; add prompts or point path at another file")
    if cfg.messages_column:
        _column(df, cfg.messages_column, "messages_column", cfg.path, (pl.List,))
    else:
        _column(df, cfg.prompt_column, "prompt_column", cfg.path, (pl.String,))
    for name, field in [(cfg.reference_column, "reference_column"), (cfg.task_type_column, "task_type_column")]:
        if name:
            _column(df, name, field, cfg.path, (pl.String,))
    return df


def _seed_rows(cfg: SeedImportConfig, df: pl.DataFrame) -> tuple[list[dict], list[tuple]]:
    """The prompts rows of the seed frame (split drawn from each id), and the empty rows as
    quarantine entries."""
    if cfg.messages_column:
        msgs = _column(df, cfg.messages_column, "messages_column", cfg.path, (pl.List,)).to_list()
    else:
        texts = _column(df, cfg.prompt_column, "prompt_column", cfg.path, (pl.String,)).to_list()
        msgs = [[{"role": "user", "content": t}] if t is not None else None for t in texts]
    refs = (_column(df, cfg.reference_column, "reference_column", cfg.path, (pl.String,)).to_list()
            if cfg.reference_column else [None] * df.height)
    tasks = (_column(df, cfg.task_type_column, "task_type_column", cfg.path, (pl.String,)).to_list()
             if cfg.task_type_column else [cfg.task_type] * df.height)
    rows, bad = [], []
    for i, (m, ref, task) in enumerate(zip(msgs, refs, tasks)):
        if not m or any(not isinstance(x, dict) or not str(x.get("content") or "").strip() for x in m):
            bad.append((keys.content_hash("seed-row", cfg.path, i), "empty_prompt", {"row": i, "messages": m}))
            continue
        if cfg.system_prompt and m[0].get("role") != "system":
            m = [{"role": "system", "content": cfg.system_prompt}, *m]
        rows.append(prompt_row(m, task_type=task, source=f"seed:{Path(cfg.path).name}", reference=ref,
                               heldout_fraction=cfg.heldout_fraction, validation_fraction=cfg.validation_fraction))
    return rows, bad


def seed_split_counts(cfg: SeedImportConfig, df: pl.DataFrame) -> dict[str, int]:
    """Prompts per split that `import_stage` will write from the checked seed frame `df` (cap
    included), without writing anything: what a recipe's pre-run check needs to know whether the
    test split would be empty. Later stages can still empty a split this counts (near-duplicate
    removal, evolution drops); the eval stage then stops with a one-line error."""
    frame = prompts_frame(_seed_rows(cfg, df)[0])
    if cfg.cap is not None:
        frame = cap_prompts(frame.sort("prompt_id"), cfg.cap, min_heldout=cfg.min_heldout)
    return dict(frame.group_by("split").len().iter_rows())


def import_stage(store: Store, cfg: SeedImportConfig, *, output: str = "seed_prompts") -> TableRef:
    """Seed prompts -> a `prompts` table (source = seed:<file name>)."""
    df = check_seeds(cfg)
    p = Path(cfg.path)
    st = p.stat()
    ident = Identity(stage="import_seeds", output=output, kind="prompts",
                     config={**cfg.model_dump(mode="json"), "file": {"size": st.st_size, "mtime_ns": st.st_mtime_ns}})

    def compute(run) -> tuple[pl.DataFrame, int]:
        rows, bad = _seed_rows(cfg, df)
        frame = prompts_frame(rows)
        if frame.height < len(rows):
            seen: set[str] = set()
            for i, r in enumerate(rows):   # own key: the kept copy keeps the prompt_id
                if r["prompt_id"] in seen:
                    bad.append((keys.content_hash("seed-dup", cfg.path, i), "exact_duplicate",
                                {"prompt_id": r["prompt_id"], "messages": r["messages"]}))
                seen.add(r["prompt_id"])
        run.quarantine(bad)
        if cfg.cap is not None:
            frame = cap_prompts(frame.sort("prompt_id"), cfg.cap, min_heldout=cfg.min_heldout)
        return frame, df.height

    return drive_frame(store, ident, compute, size=_CHUNK)


class ConstraintConfig(BaseModel):
    """Which prompts get verifiable constraints (filters/instructions.py) and how many."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fraction: float = Field(1.0, ge=0, le=1, description="share of prompts that get constraints (by prompt hash)")
    k_min: int = Field(1, ge=1, description="fewest constraints per chosen prompt")
    k_max: int = Field(2, ge=1, description="most constraints per chosen prompt")
    kinds: tuple[str, ...] | None = Field(None, description="TRAIN kinds to draw from; None = every train kind "
                                          "(filters.instructions.kinds_in('train')). Validation / test prompts draw "
                                          "these in held-out phrasings and values, plus their split's unseen kinds")
    seed: int = Field(0, description="seed of the per-prompt draws")

    @model_validator(mode="after")
    def _check(self):
        if self.k_min > self.k_max:
            raise ValueError(f"k_min={self.k_min} > k_max={self.k_max}; use k_min <= k_max")
        if self.kinds is not None:
            if not self.kinds:
                raise ValueError("kinds is empty; name at least one constraint kind or leave kinds out")
            # unknown kinds and kinds held out of training: one-line errors at recipe load
            instructions.sample_constraints(random.Random(0), 1, kinds=self.kinds, split="train")
            if self.k_min > 1 and _largest_compatible(self.kinds) < self.k_min:
                raise ValueError(f"kinds {list(self.kinds)} conflict: no {self.k_min} of them can be asked together; "
                                 "lower k_min or add compatible kinds")
        return self


def _largest_compatible(kinds: tuple[str, ...]) -> int:
    """Size of the largest set of mutually compatible kinds (exhaustive for small sets)."""
    from itertools import combinations

    kinds = tuple(dict.fromkeys(kinds))
    for size in range(min(len(kinds), 4), 0, -1):
        if any(all(instructions.compatible(a, b) for a, b in combinations(group, 2))
               for group in combinations(kinds, size)):
            return size
    return 0


def constrain(row: dict, cfg: ConstraintConfig) -> dict:
    """The prompt row with constraints drawn for it (deterministic per prompt_id and seed), their
    instruction sentences appended to the last user message; unchanged if not drawn or if it
    already carries constraints. A gold reference is dropped: it need not satisfy them."""
    if instructions.loads(row.get("constraints")):
        return row
    rng = random.Random(keys.content_hash("constraints", cfg.seed, row["prompt_id"]))
    if rng.random() >= cfg.fraction:
        return row
    # the prompt's split picks the constraint split: heldout prompts get the test split (unseen kinds,
    # phrasings and parameter values), validation prompts the validation split, train prompts train
    split = {"heldout": "test", "validation": "validation"}.get(row.get("split") or "train", "train")
    pool = cfg.kinds
    if pool is not None and split != "train":
        pool = (*pool, *(k for k in instructions.kinds_in(split) if instructions.CATALOGUE[k].role == split))
    cons = instructions.sample_constraints(rng, rng.randint(cfg.k_min, max(cfg.k_min, cfg.k_max)), kinds=pool,
                                           split=split, request=row["messages"][-1]["content"].strip())
    if not cons:
        return row
    msgs = [dict(m) for m in row["messages"]]
    msgs[-1]["content"] = msgs[-1]["content"].rstrip() + "\n\n" + " ".join(instructions.describe(c) for c in cons)
    return prompt_row(msgs, task_type=row.get("task_type"), source=row.get("source") or "unknown",
                      topic_id=row.get("topic_id"), constraints=instructions.dumps(cons), reference=None,
                      split=row.get("split") or "train")


def constraints_stage(store: Store, cfg: ConstraintConfig, *, prompts: str | TableRef = "seed_prompts",
                      output: str = "if_prompts") -> TableRef:
    pref = store.ref(prompts)
    if cfg.kinds is not None:     # one-line error before any write: unknown kind, or a kind held out of training
        instructions.sample_constraints(random.Random(0), 1, kinds=cfg.kinds, split="train")

    def compute(run) -> tuple[pl.DataFrame, int]:
        src = store.read(pref)
        return prompts_frame([constrain(r, cfg) for r in src.to_dicts()]), src.height

    return drive_frame(store, Identity(stage="constraints", output=output, kind="prompts", parents=(pref,),
                                       config=cfg.model_dump(mode="json")), compute, size=_CHUNK)


class PromptDedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    near: bool = Field(True, description="also drop near-duplicates (MinHash + LSH over word 3-grams)")
    threshold: float = Field(0.8, gt=0, le=1, description="estimated Jaccard similarity that counts as near-duplicate")
    seed: int = Field(0, description="MinHash seed")
    limit: int | None = Field(None, ge=1, description="keep at most this many prompts (smallest ids first, split by "
                              "split so every split keeps its share; `prefmill run --limit`)")
    min_heldout: int = Field(0, ge=0, description="with limit: keep at least this many held-out prompts")


def dedup_stage(store: Store, cfg: PromptDedupConfig, *, prompts: str | TableRef, output: str = "prompts") -> TableRef:
    """Exact + near-duplicate prompt removal; the later copy goes to quarantine (exact_duplicate /
    near_duplicate, with the kept prompt_id in the payload)."""
    pref = store.ref(prompts)

    def compute(run) -> tuple[pl.DataFrame, int]:
        src = store.read(pref).sort("prompt_id")          # a stable "first copy" independent of write order
        marked = dedup(src.lazy(), text="messages", key="prompt_id", near=cfg.near, threshold=cfg.threshold,
                       seed=cfg.seed).collect()
        kept = marked.filter(pl.col(DROP).is_null()).drop(DROP)
        if cfg.limit is not None:
            kept = cap_prompts(kept, cfg.limit, min_heldout=cfg.min_heldout)
        dropped = marked.filter(pl.col(DROP).is_not_null())
        run.quarantine([(r["prompt_id"], r[DROP].split("_of:")[0], {"duplicate_of": r[DROP].split(":", 1)[-1],
                                                                     "messages": r["messages"]})
                        for r in dropped.to_dicts()])
        return kept, src.height

    return drive_frame(store, Identity(stage="dedup_prompts", output=output, kind="prompts", parents=(pref,),
                                       config=cfg.model_dump(mode="json")), compute, size=_CHUNK)


def cap_prompts(frame: pl.DataFrame, limit: int, *, min_heldout: int = 0) -> pl.DataFrame:
    """At most `limit` prompts, smallest ids first within each split, each split keeping its
    share of the frame (held-out at least `min_heldout` when the frame has that many)."""
    if frame.height <= limit:
        return frame
    counts = dict(frame.group_by("split").len().iter_rows())
    held = min(counts.get("heldout", 0), max(min_heldout, round(limit * counts.get("heldout", 0) / frame.height)))
    val = min(counts.get("validation", 0), round(limit * counts.get("validation", 0) / frame.height))
    quota = {"heldout": held, "validation": val, "train": max(limit - held - val, 0)}
    rank = pl.col("prompt_id").rank("ordinal").over("split")
    return frame.filter(rank <= pl.col("split").replace_strict(quota, default=0, return_dtype=pl.UInt32))
