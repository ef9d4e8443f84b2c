"""Table schemas, defined once and validated on every write (docs/data-model.md describes them).

Each schema maps a table kind to its polars dtypes and its key column. `validate(frame, kind)`
returns the frame with columns in schema order and exact dtypes, or raises SchemaError naming
the first problem and the fix. Tables are named freely (`r1_samples`, `quickstart.pairs`); their
kind is recorded in the store so every later write is checked against the same schema.
"""
from __future__ import annotations

from dataclasses import dataclass

import polars as pl

MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})
MESSAGES = pl.List(MESSAGE)
ATTRIBUTES = pl.List(pl.Struct({"name": pl.String, "value": pl.Float64}))


class SchemaError(ValueError):
    """A frame does not match its table's schema."""


@dataclass(frozen=True)
class TableSchema:
    kind: str
    key: str
    columns: dict[str, pl.DataType]
    doc: str

    @property
    def schema(self) -> pl.Schema:
        return pl.Schema(self.columns)


def _s(kind: str, key: str, doc: str, **columns: pl.DataType) -> TableSchema:
    return TableSchema(kind=kind, key=key, columns=dict(columns), doc=doc)


SCHEMAS: dict[str, TableSchema] = {
    s.kind: s
    for s in [
        _s("topics", "topic_id", "Topic tree nodes: macro topics and their subtopics.",
           topic_id=pl.String, parent_id=pl.String, depth=pl.Int8, text=pl.String,
           source=pl.String),
        _s("prompts", "prompt_id", "Prompts as chat messages, with machine-checkable constraints and optional gold answer.",
           prompt_id=pl.String, messages=MESSAGES, task_type=pl.String, constraints=pl.String,
           reference=pl.String, source=pl.String, topic_id=pl.String, split=pl.String),
        _s("samples", "sample_id", "Policy completions, n per prompt; SPIN gold answers have is_reference=true.",
           sample_id=pl.String, prompt_id=pl.String, policy=pl.String, policy_revision=pl.String,
           sample_index=pl.Int32, seed=pl.Int64, sampling=pl.String, completion=pl.String,
           finish_reason=pl.String, prompt_tokens=pl.Int32, completion_tokens=pl.Int32,
           is_reference=pl.Boolean),
        _s("scores", "score_id", "One score per (sample, scorer): scalar, attributes, spread over judge samples, judge/critique text, failed checks.",
           score_id=pl.String, sample_id=pl.String, prompt_id=pl.String, scorer=pl.String,
           score=pl.Float64, attributes=ATTRIBUTES, spread=pl.Float64, text=pl.String,
           details=pl.String),
        _s("judgments", "judgment_id", "Pairwise judge verdicts asked in both orders.",
           judgment_id=pl.String, prompt_id=pl.String, sample_a=pl.String, sample_b=pl.String,
           judge=pl.String, verdict_ab=pl.String, verdict_ba=pl.String, text_ab=pl.String,
           text_ba=pl.String),
        _s("pairs", "pair_id", "Preference pairs in TRL's conversational format plus scores and source keys.",
           pair_id=pl.String, prompt_id=pl.String, prompt=MESSAGES, chosen=MESSAGES, rejected=MESSAGES,
           chosen_id=pl.String, rejected_id=pl.String, chosen_score=pl.Float64,
           rejected_score=pl.Float64, margin=pl.Float64, strategy=pl.String),
        _s("unpaired", "row_id", "KTO unpaired rows: prompt, completion, desirable label.",
           row_id=pl.String, prompt_id=pl.String, sample_id=pl.String, prompt=MESSAGES,
           completion=MESSAGES, label=pl.Boolean, score=pl.Float64),
        _s("sft", "row_id", "SFT rows (rejection-sampling fine-tuning): prompt + completion messages.",
           row_id=pl.String, prompt_id=pl.String, sample_id=pl.String, prompt=MESSAGES,
           completion=MESSAGES, score=pl.Float64),
        _s("reviews", "review_id", "Human decisions on pairs (prefmill review): one row per (compared samples, reviewer).",
           review_id=pl.String, pair_id=pl.String, pairs_table=pl.String, prompt_id=pl.String,
           chosen_id=pl.String, rejected_id=pl.String, decision=pl.String, choice=pl.String,
           shown_first=pl.String, status=pl.String, drop_reason=pl.String, canary=pl.Boolean,
           reviewer=pl.String, note=pl.String, seconds=pl.Float64, created_at=pl.String),
        _s("models", "model_id", "Trained model versions with lineage.",
           model_id=pl.String, name=pl.String, path=pl.String, base_model=pl.String,
           reference_model=pl.String, dataset=pl.String, trainer=pl.String, config=pl.String,
           metrics=pl.String, round=pl.Int32),
        _s("step_labels", "label_id", "Per-step labels of one answer (Math-Shepherd Monte-Carlo, LLM step judge or rule): steps, labels, first wrong step.",
           label_id=pl.String, sample_id=pl.String, prompt_id=pl.String, prompt=MESSAGES,
           steps=pl.List(pl.String), labels=pl.List(pl.Boolean), step_scores=pl.List(pl.Float64),
           n_steps=pl.Int32, first_wrong_step=pl.Int32, method=pl.String, labeller=pl.String, k=pl.Int32,
           calls=pl.Int64, details=pl.String),
        _s("evals", "eval_id", "Per-round evaluation metrics on the held-out prompt set.",
           eval_id=pl.String, model=pl.String, round=pl.Int32, metric=pl.String, value=pl.Float64,
           n=pl.Int64, details=pl.String),
        _s("quarantine", "quarantine_id", "Every dropped or unreadable row: stage, reason, raw payload; run = the stage run's fingerprint.",
           quarantine_id=pl.String, run=pl.String, stage=pl.String, table=pl.String, row_key=pl.String,
           reason=pl.String, payload=pl.String),
        _s("lineage", "record_id", "Completion records: one per completed stage version (see pipelines/lineage.py).",
           record_id=pl.String, table=pl.String, version=pl.Int64, stage=pl.String, fingerprint=pl.String,
           parents=pl.List(pl.String), config=pl.String, models=pl.String, templates=pl.String,
           packages=pl.String, git_sha=pl.String, rows_in=pl.Int64, rows_out=pl.Int64, drops=pl.String,
           wall_s=pl.Float64, stats=pl.String, created_at=pl.String),
    ]
}


def get_schema(kind: str) -> TableSchema:
    try:
        return SCHEMAS[kind]
    except KeyError:
        raise SchemaError(f"unknown table kind {kind!r}; expected one of {', '.join(sorted(SCHEMAS))}") from None


def validate(frame: pl.DataFrame, kind: str) -> pl.DataFrame:
    """Check columns and dtypes against the schema; return the frame in schema order.

    Null-typed columns (all-None literals) are cast to the schema dtype; any other mismatch
    raises. The key column must be non-null and unique within the frame.
    """
    spec = get_schema(kind)
    missing = [c for c in spec.columns if c not in frame.columns]
    if missing:
        raise SchemaError(f"{kind}: missing column(s) {', '.join(missing)}; add them (null is allowed except for {spec.key})")
    extra = [c for c in frame.columns if c not in spec.columns]
    if extra:
        raise SchemaError(f"{kind}: unexpected column(s) {', '.join(extra)}; drop them or use a table kind that has them")
    casts = []
    for name, dtype in spec.columns.items():
        got = frame.schema[name]
        if got == dtype:
            casts.append(pl.col(name))
        elif got == pl.Null or (got.is_integer() and dtype.is_integer()) or (got.is_numeric() and dtype == pl.Float64):
            casts.append(pl.col(name).cast(dtype))
        else:
            raise SchemaError(f"{kind}.{name}: dtype {got} does not match {dtype}; cast the column before writing")
    out = frame.select(casts)
    key = out.get_column(spec.key)
    if key.null_count():
        raise SchemaError(f"{kind}.{spec.key}: {key.null_count()} null key(s); every row needs its content-hash key")
    if key.n_unique() != out.height:
        raise SchemaError(f"{kind}.{spec.key}: duplicate keys in one batch; deduplicate before writing")
    return out


def empty(kind: str) -> pl.DataFrame:
    return pl.DataFrame(schema=get_schema(kind).schema)
