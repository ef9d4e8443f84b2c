"""Pinned store tables -> `datasets.Dataset` in TRL's conversational formats.

    frame, refs = read_tables(store, "r1_pairs@3")            # or a list of refs (accumulated data)
    ds = preference_dataset(frame)     # prompt: [messages], chosen / rejected: [assistant message]
    ds = unpaired_dataset(frame)       # prompt, completion, label (KTO)
    ds = completion_dataset(frame)     # prompt, completion (SFT)
"""
from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from pipelines.store import Store, TableRef

DataArg = TableRef | str | Sequence[TableRef | str]


class TrainingDataError(ValueError):
    """The training table is empty, of the wrong kind, or holds malformed rows."""


def read_tables(store: Store, data: DataArg, *, kinds: Sequence[str]) -> tuple[pl.DataFrame, list[TableRef]]:
    """Read one or several pinned table versions (all of one of `kinds`) and concatenate them."""
    items = [data] if isinstance(data, (TableRef, str)) else list(data)
    if not items:
        raise TrainingDataError("no training tables given; pass a table ref like r1_pairs@3")
    refs = [store.ref(d) for d in items]
    found = {store.kind(r.name) for r in refs}
    if len(found) != 1 or not found <= set(kinds):
        raise TrainingDataError(f"training tables {', '.join(map(str, refs))} hold {sorted(found)} rows; "
                                f"this trainer reads one of: {', '.join(kinds)}")
    frame = pl.concat([store.read(r) for r in refs], how="vertical")
    if frame.is_empty():
        raise TrainingDataError(f"training tables {', '.join(map(str, refs))} are empty; build pairs/samples first")
    return frame, refs


def _messages(value: list[dict] | None) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in (value or [])]


def preference_dataset(frame: pl.DataFrame):
    """pairs rows -> TRL conversational preference rows (explicit prompt)."""
    from datasets import Dataset

    rows = [{"prompt": _messages(r["prompt"]), "chosen": _messages(r["chosen"]), "rejected": _messages(r["rejected"])}
            for r in frame.select("prompt", "chosen", "rejected").iter_rows(named=True)]
    bad = [i for i, r in enumerate(rows) if not r["prompt"] or not r["chosen"] or not r["rejected"]]
    if bad:
        raise TrainingDataError(f"{len(bad)} pair row(s) with an empty prompt/chosen/rejected (first at row {bad[0]}); "
                                "fix the pairs stage output")
    return Dataset.from_list(rows)


def unpaired_dataset(frame: pl.DataFrame):
    """unpaired rows (prompt, completion, label) or pairs rows (unpaired by TRL) -> KTO rows."""
    from datasets import Dataset
    from trl import unpair_preference_dataset

    if "label" in frame.columns:
        return Dataset.from_list([{"prompt": _messages(r["prompt"]), "completion": _messages(r["completion"]),
                                   "label": bool(r["label"])}
                                  for r in frame.select("prompt", "completion", "label").iter_rows(named=True)])
    return unpair_preference_dataset(preference_dataset(frame))


def completion_dataset(frame: pl.DataFrame):
    """sft rows -> TRL conversational prompt-completion rows (loss on the completion only)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": _messages(r["prompt"]), "completion": _messages(r["completion"])}
                              for r in frame.select("prompt", "completion").iter_rows(named=True)])


def top_scored(frame: pl.DataFrame, *, top_k: int | None, min_score: float | None) -> pl.DataFrame:
    """The `top_k` highest-scored rows per prompt (ties broken by row_id, so the choice is stable);
    top_k None keeps every row at or above min_score."""
    if min_score is not None:
        frame = frame.filter(pl.col("score") >= min_score)
    if top_k is None:
        return frame
    return (frame.filter(pl.col("score").is_not_null())
            .sort(["prompt_id", "score", "row_id"], descending=[False, True, False])
            .group_by("prompt_id", maintain_order=True).head(top_k))
