"""Ensemble stage: combine the scores several scorers wrote for the same samples into one more
scorer's rows (filters/ensemble.py: per-scorer normalisation, then mean, min or mean - lambda*std).

    ref = ensemble_stage(store, samples="r1.samples", prompts="prompts", cfg=EnsembleConfig(members=("rules", "judge")),
                         members=["r1.scores.rules@2", "r1.scores.judge@5"], output="r1.scores.ens")

A recipe names members by scorer name; the flow resolves them to this round's tables. A sample
missing a member's score is quarantined (`missing_scorers`), never scored from fewer members.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import polars as pl

from filters import drops
from filters.ensemble import ensemble
from generators.scorers.ensemble import EnsembleConfig
from pipelines import keys
from pipelines.driver import Identity, WorkBase, drive
from pipelines.frames import frame_items, rows_batch
from pipelines.scoring import score_rows
from pipelines.store import Store, TableRef

_CHUNK = 5000


class _Result:
    """score_rows' view of one combined row."""

    def __init__(self, score: float, attributes: dict[str, float], spread: float, details: str):
        self.score, self.attributes, self.spread, self.text, self.details = score, attributes, spread, None, details


class EnsembleWork(WorkBase):
    def __init__(self, store: Store, cfg: EnsembleConfig, *, samples: TableRef, prompts: TableRef,
                 members: Sequence[TableRef], output: str):
        if not members:
            raise ValueError("an ensemble needs at least one member scores table")
        self.store, self.cfg, self.samples, self.members = store, cfg, samples, list(members)
        if cfg.weights and len(cfg.members) != len(self.members):
            raise ValueError(f"ensemble weights are keyed by member name but {len(self.members)} tables were given "
                             f"for {len(cfg.members)} members; pass one table per member, in `members` order")
        tables = [store.read(m, columns=["sample_id", "scorer", "score"]) for m in self.members]
        self.long = pl.concat(tables)
        self.names = sorted(self.long["scorer"].unique().to_list())
        # weights by scorer id (a member table holds one scorer's rows)
        self.weights = ({sid: cfg.weight_of(name) for name, t in zip(cfg.members, tables)
                         for sid in t["scorer"].unique().to_list()} if cfg.weights else None)
        if not self.names:
            raise ValueError(f"ensemble members {[str(m) for m in self.members]} hold no scores; "
                             "score the samples first")
        digest = hashlib.blake2b(json.dumps(self.names).encode(), digest_size=6).hexdigest()
        weights = "" if not self.weights else ":w#" + hashlib.blake2b(
            json.dumps(sorted(self.weights.items())).encode(), digest_size=4).hexdigest()
        self.id = f"ensemble:{cfg.display_name()}:{cfg.method}:lam{cfg.lam:g}:{cfg.normalize}{weights}:members#{digest}"
        self.identity = Identity(stage="score", output=output, kind="scores",
                                 parents=(samples, prompts, *self.members),
                                 config={"scorer": cfg.model_dump(mode="json"), "scorer_id": self.id,
                                         "member_scorers": self.names})
        self.rows = pl.DataFrame()
        self.bad: list = []
        self.base = pl.DataFrame()

    def prepare(self, run) -> None:
        cfg, names, sid = self.cfg, self.names, self.id
        self.base = self.store.read(self.samples, columns=["sample_id", "prompt_id"]).with_columns(
            pl.col("sample_id").map_elements(lambda s: keys.score_id(s, sid), return_dtype=pl.String)
            .alias("score_id"))
        long = self.long.join(self.base.select("sample_id"), on="sample_id", how="semi")
        combined = ensemble(long.lazy(), method=cfg.method, normalisation=cfg.normalize, lam=cfg.lam, scorers=names,
                            weights=self.weights, require_all=True).collect()
        rows = self.base.join(combined, on="sample_id", how="left").with_columns(
            pl.when(pl.col("n_scorers").is_null()).then(pl.lit("missing_scorers"))
            .otherwise(pl.col(drops.DROP)).alias(drops.DROP)).sort("sample_id")
        kept, dropped = (f.collect() for f in drops.split(rows.lazy()))
        run.quarantine((r["score_id"], r[drops.DROP], {k: r[k] for k in ("sample_id", "score", *names)})
                       for r in dropped.iter_rows(named=True))
        if kept.height:
            z = kept.select(names)
            spread = z.select(pl.concat_list(names).list.std(ddof=0)).to_series().to_list()
            details = json.dumps({"members": names, "attributes": f"{cfg.normalize}-normalised"})
            results = [_Result(s, dict(zip(names, vals)), sp, details)
                       for s, vals, sp in zip(kept["score"].to_list(), z.iter_rows(), spread)]
            self.rows = score_rows(kept, sid, results)
        else:
            self.rows = score_rows(kept, sid, [])

    def total_units(self) -> int:
        return self.rows.height

    def rows_in(self) -> int:
        return self.base.height

    def target_keys(self) -> list[str]:
        return self.base["score_id"].to_list()

    def todo(self, done: set[str]):
        return frame_items(self.rows, "score_id", done=done, size=_CHUNK)

    def process(self, items):
        return rows_batch(items)


def ensemble_stage(store: Store, *, samples: TableRef | str, prompts: TableRef | str, cfg: EnsembleConfig,
                   members: Sequence[TableRef | str], output: str) -> TableRef:
    work = EnsembleWork(store, cfg, samples=store.ref(samples), prompts=store.ref(prompts),
                        members=[store.ref(m) for m in members], output=output)
    return drive(store, work, batch_size=_CHUNK)
