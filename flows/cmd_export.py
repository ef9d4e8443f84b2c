"""`prefmill export NAME[@VERSION] --format hf|parquet|jsonl --out DIR [--split test=0.05]`.

Writes a pinned pairs / unpaired / sft table version in TRL's conversational format with a
dataset card (see flows/export.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from flows.export import FORMATS, ExportConfig, export, parse_split


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a pairs/unpaired/sft table version for TRL and datasets",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="NAME[@VERSION]", help="table to export; latest version when no @VERSION")
    p.add_argument("--format", choices=FORMATS, default="hf", help="hf (save_to_disk), parquet or jsonl (default hf)")
    p.add_argument("--out", required=True, type=Path, help="output folder (absent or empty unless --overwrite)")
    p.add_argument("--split", action="append", default=[], metavar="NAME=FRACTION",
                   help="held-out split by prompt hash, e.g. test=0.05 (repeatable); the rest is train")
    p.add_argument("--seed", type=int, default=0, help="salt of the split hash (default 0)")
    p.add_argument("--store", default=None, help="store folder or object-store URI, e.g. s3://bucket/prefix (default $PREFMILL_STORE or ./store)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.store import Store

    cfg = ExportConfig(source=args.source, out=args.out, format=args.format,
                       splits=tuple(parse_split(s) for s in args.split), seed=args.seed, overwrite=args.overwrite)
    res = export(Store(args.store, create=False), cfg)
    counts = ", ".join(f"{k} {v}" for k, v in res.counts.items())
    print(f"exported {res.ref} ({res.kind}, {cfg.format}) to {res.out}: {counts}")
    return 0
