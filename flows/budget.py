"""Run budgets: max generations / max tokens per run. The sampling stage calls the budget's
callback after each committed batch; when a limit is reached it raises BudgetExhausted, which
stops the run cleanly with everything so far committed (a rerun with a larger budget resumes)."""
from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from pipelines.store import Store


class BudgetExhausted(RuntimeError):
    """The run reached its generation or token budget; every committed batch is kept."""


@dataclass
class Budget:
    max_generations: int | None = None
    max_tokens: int | None = None
    tables: list[str] = field(default_factory=list)   # sample tables this run wrote

    def used(self, store: Store) -> tuple[int, int]:
        gens = toks = 0
        for t in self.tables:
            if store.exists(t):
                df = store.read(t, columns=["completion_tokens"])
                gens += df.height
                toks += int(df.get_column("completion_tokens").cast(pl.Int64).sum() or 0)
        return gens, toks

    def check(self, store: Store) -> None:
        if self.max_generations is None and self.max_tokens is None:
            return
        gens, toks = self.used(store)
        if self.max_generations is not None and gens >= self.max_generations:
            raise BudgetExhausted(f"budget reached: {gens} generations >= max_generations={self.max_generations}; "
                                  "everything so far is committed; raise budget.max_generations and rerun to continue")
        if self.max_tokens is not None and toks >= self.max_tokens:
            raise BudgetExhausted(f"budget reached: {toks} tokens >= max_tokens={self.max_tokens}; "
                                  "everything so far is committed; raise budget.max_tokens and rerun to continue")
