"""Ensembles of scorers: per-scorer normalisation, then mean, min (worst case) or
mean - lambda * std across scorers (a pessimistic, disagreement-penalising score).

    combine(np.array([[1.0, 4.0], [0.0, 2.0]]), method="mean", normalize="zscore")

Rows are responses, columns scorers. Normalisation is per column over all rows of the pinned
input (z-score, or percentile rank in [0, 1]); a constant column normalises to 0. The scoring
stage reads the member scores tables, aligns them by sample and calls `combine`.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from generators.scorers.base import ScorerConfigBase

Method = Literal["mean", "min", "mean_minus_std"]
Normalize = Literal["zscore", "rank", "none"]


class EnsembleConfig(ScorerConfigBase):
    kind: Literal["ensemble"] = Field("ensemble", description="scorer kind: combination of scores already written")
    members: tuple[str, ...] = Field(description="scores tables (NAME or NAME@VERSION) to combine; every scorer "
                                     "id found in them is one member", min_length=1)
    method: Method = Field("mean", description="mean, min (worst case) or mean_minus_std")
    lam: float = Field(1.0, ge=0, description="lambda of mean_minus_std")
    normalize: Normalize = Field("zscore", description="per-scorer normalisation before combining")
    name: str | None = Field(None, description="short name in the scorer id; default: the method")

    def display_name(self) -> str:
        return self.name or self.method


def normalise(matrix: np.ndarray, how: Normalize) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if how == "none" or m.size == 0:
        return m
    if how == "zscore":
        std = m.std(axis=0)
        return np.where(std > 0, (m - m.mean(axis=0)) / np.where(std > 0, std, 1.0), 0.0)
    if how == "rank":
        n = m.shape[0]
        if n == 1:
            return np.zeros_like(m)
        out = np.empty_like(m)
        for j in range(m.shape[1]):     # average ranks for ties, scaled to [0, 1]
            col = m[:, j]
            order = np.argsort(col, kind="stable")
            ranks = np.empty(n)
            ranks[order] = np.arange(n, dtype=np.float64)
            uniq, inv = np.unique(col, return_inverse=True)
            mean_rank = np.bincount(inv, weights=ranks) / np.bincount(inv)
            out[:, j] = mean_rank[inv] / (n - 1)
        return out
    raise ValueError(f"unknown normalize {how!r}; expected one of zscore, rank, none")


def combine(matrix: np.ndarray, *, method: Method, normalize: Normalize = "zscore", lam: float = 1.0) -> np.ndarray:
    """One ensemble score per row of `matrix` [rows, scorers] (all values finite)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] < 1:
        raise ValueError(f"ensemble needs a [rows, scorers] matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("ensemble input holds NaN/inf; drop rows with a missing member score first")
    z = normalise(m, normalize)
    if method == "mean":
        return z.mean(axis=1)
    if method == "min":
        return z.min(axis=1)
    if method == "mean_minus_std":
        return z.mean(axis=1) - lam * z.std(axis=1)
    raise ValueError(f"unknown ensemble method {method!r}; expected one of mean, min, mean_minus_std")
