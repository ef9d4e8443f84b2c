"""The models table: every trained model version, registered with lineage.

    rec = register_training(store, trainer="dpo/sigmoid", data=refs, policy=p, reference=r,
                            config=cfg, output_dir=out, name="r1-dpo", round=1, fit=lambda: train_and_save())
    list_models(store)        # polars DataFrame, one row per model (`prefmill models list`)

`register_training` opens a StageRun (stage "train", output table `models`, parents = the data
refs); when the same run (same data versions, config, policy, reference, output folder) already
completed and its folder still exists, it returns that record without training. Otherwise it
calls `fit()` (which trains and saves the folder and returns metrics), appends the model row and
writes the completion record last. Under `accelerate launch` every process calls `fit()` (the
training is collective) and gets the record back, but only the main process (RANK 0) writes the
row and the completion record, so a run registers one model however many processes train it.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel

from pipelines.keys import content_hash
from pipelines.schemas import empty
from pipelines.stage import StageRun
from pipelines.store import Store, TableRef

log = logging.getLogger("prefmill.trainers")
MODELS_TABLE = "models"


@dataclass(frozen=True)
class ModelRecord:
    """One row of the models table (config and metrics decoded)."""

    model_id: str
    name: str
    path: str
    base_model: str
    reference_model: str | None
    dataset: str
    trainer: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    round: int | None

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = json.dumps(self.config, sort_keys=True, default=str)
        d["metrics"] = json.dumps(self.metrics, sort_keys=True, default=str)
        return d

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ModelRecord:
        d = dict(row)
        d["config"] = json.loads(d["config"] or "{}")
        d["metrics"] = json.loads(d["metrics"] or "{}")
        return cls(**d)


def _revision(path: str | Path | None) -> str | None:
    if path is None:
        return None
    from generators.models.registry import model_revision

    return model_revision(path)


def register_training(store: Store, *, trainer: str, data: Sequence[TableRef], policy: str | Path,
                      reference: str | Path | None, config: BaseModel, output_dir: str | Path, name: str,
                      round: int | None, fit: Callable[[], dict[str, Any]], table: str = MODELS_TABLE) -> ModelRecord:
    """Train (via `fit`) unless this exact run completed before; register the model; return it."""
    output_dir = Path(output_dir).resolve()
    cfg = config.model_dump(mode="json")
    if cfg.get("dtype") == "auto":   # the precision this machine resolved it to is part of the run
        cfg["precision"] = config.precision  # type: ignore[attr-defined]
    run = StageRun(store, stage="train", output=table, kind="models", parents=data,
                   config={"trainer": trainer, "name": name, "round": round, "output_dir": str(output_dir), **cfg},
                   models={"policy": str(policy), "policy_revision": _revision(policy),
                           "reference": str(reference) if reference else None, "reference_revision": _revision(reference)})
    model_id = content_hash("model", run.fingerprint)
    if run.reused and (output_dir / "config.json").is_file():
        have = store.read(run.reused).filter(pl.col("model_id") == model_id)
        if have.height:
            log.info("train: %s already trained by an identical run (%s); reusing it", name, run.reused)
            return ModelRecord.from_row(have.row(0, named=True))
    metrics = fit()
    rec = ModelRecord(model_id=model_id, name=name, path=str(output_dir), base_model=str(policy),
                      reference_model=str(reference) if reference else None,
                      dataset="+".join(str(r) for r in data), trainer=trainer, config=cfg, metrics=metrics, round=round)
    if not is_main_rank():
        return rec
    run.write(pl.DataFrame([rec.row()], schema=empty("models").schema))
    ref = run.finish(rows_in=1)
    log.info("train: registered %s (%s) as %s", name, output_dir, ref)
    return rec


def is_main_rank() -> bool:
    """True in a single process and in the global rank-0 process of `accelerate launch` / torchrun."""
    return os.environ.get("RANK", "0") == "0"


def list_models(store: Store, *, table: str = MODELS_TABLE) -> pl.DataFrame:
    """Every registered model (newest table version), ordered by round then name."""
    if not store.exists(table):
        return empty("models")
    return store.read(table).sort(["round", "name"], nulls_last=False)


def get_model(store: Store, name_or_id: str, *, table: str = MODELS_TABLE) -> ModelRecord:
    """The newest registered model with this name (or this model_id)."""
    df = list_models(store, table=table).filter((pl.col("name") == name_or_id) | (pl.col("model_id") == name_or_id))
    if df.is_empty():
        raise KeyError(f"no registered model {name_or_id!r}; `prefmill models list` shows the registered ones")
    return ModelRecord.from_row(df.row(-1, named=True))
