"""Union of pinned versions of tables of one kind (e.g. seed prompts + topic-tree prompts) into
one new table version; a key present in several inputs is kept once (first input wins).

    union_stage(store, ["demo.prompts.seeds@0", "demo.prompts.written@3"], output="demo.prompts.union")
"""
from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from pipelines.driver import Identity
from pipelines.frames import drive_frame
from pipelines.store import Store, StoreError, TableRef

_CHUNK = 5000


def union_stage(store: Store, inputs: Sequence[TableRef | str], *, output: str) -> TableRef:
    refs = [store.ref(r) for r in inputs]
    if not refs:
        raise StoreError("union needs at least one input table; pass NAME[@VERSION] references")
    kinds = {store.kind(r.name) for r in refs}
    if len(kinds) != 1:
        raise StoreError(f"cannot union tables of different kinds {sorted(kinds)}; union tables of one kind")
    kind = kinds.pop()

    def compute(run) -> tuple[pl.DataFrame, int]:
        frame = pl.concat([store.read(r) for r in refs], how="vertical")
        return frame.unique(run.key, keep="first", maintain_order=True), frame.height

    return drive_frame(store, Identity(stage="union", output=output, kind=kind, parents=tuple(refs)), compute,
                       size=_CHUNK)
