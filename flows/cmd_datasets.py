"""`prefmill datasets ...`: look at the versioned store.

    prefmill datasets list                       tables, kinds, latest versions, rows, completion
    prefmill datasets log NAME                   every version: commits and lineage records
    prefmill datasets show NAME[@VERSION] [--rows N]
    prefmill datasets diff NAME@A NAME@B         rows added/removed by key, schema changes, lineage

Every command takes `--store DIR|URI` (a folder or an object-store URI such as s3://bucket/prefix;
default $PREFMILL_STORE or ./store) and `--json` (one JSON document on stdout). Read commands
never create a store. Object-store credentials come only from the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION, ...; see pipelines/objectstore.py).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

import polars as pl

from pipelines.lineage import LINEAGE_TABLE, decode
from pipelines.quarantine import QUARANTINE_TABLE
from pipelines.schemas import SCHEMAS, get_schema
from pipelines.stage import lineage_of
from pipelines.store import RESERVED, Store, StoreError, TableRef, default_root


def register(sub: Any) -> None:
    p = sub.add_parser("datasets", help="list, log, show and diff versioned tables of the store")
    cmds = p.add_subparsers(dest="datasets_command", metavar="SUBCOMMAND", required=True)

    def common(q: argparse.ArgumentParser) -> argparse.ArgumentParser:
        q.add_argument("--store", default=None,
                       help="store folder or object-store URI, e.g. s3://bucket/prefix (default: $PREFMILL_STORE or ./store)")
        q.add_argument("--json", action="store_true", help="print one JSON document on stdout")
        return q

    common(cmds.add_parser("list", help="tables with kind, latest version, rows and completion")).set_defaults(func=cmd_list)
    q = common(cmds.add_parser("log", help="each version of a table with its lineage (--funnel RECIPE: the "
                                           "recipe's funnel and cost per accepted pair)"))
    q.add_argument("--funnel", action="store_true", help="NAME is a recipe: print its funnel from prompts to pairs")
    q.add_argument("name", help="table name")
    q.set_defaults(func=cmd_log)
    q = common(cmds.add_parser("show", help="schema, lineage and first rows of a version"))
    q.add_argument("ref", help="NAME or NAME@VERSION")
    q.add_argument("--rows", type=_rows, default=10, help="rows to print (default 10)")
    q.set_defaults(func=cmd_show)
    q = common(cmds.add_parser("diff", help="rows added/removed by key, schema changes and lineage of two versions"))
    q.add_argument("a", help="NAME@A")
    q.add_argument("b", help="NAME@B")
    q.add_argument("--rows", type=_rows, default=10, help="keys to list per side (default 10)")
    q.set_defaults(func=cmd_diff)


def _rows(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"--rows {text!r} is not a non-negative integer; e.g. --rows 20")
    return int(text)


def _open(args: argparse.Namespace) -> Store:
    return Store(args.store if args.store else default_root(), create=False)


def _emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str, ensure_ascii=False) + "\n")


def _lineage_at(store: Store, ref: TableRef) -> dict | None:
    recs = lineage_of(store, ref.name)
    if recs.is_empty():
        return None
    recs = recs.filter(pl.col("version") == ref.version)
    return decode(recs.row(recs.height - 1, named=True)) if recs.height else None


def _ts(ms: Any) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds") if isinstance(ms, int) else str(ms)


def _lineage_lines(rec: dict, indent: str = "  ") -> list[str]:
    drops = ", ".join(f"{k}={v}" for k, v in rec["drops"].items()) or "none"
    models = json.dumps(rec["models"], sort_keys=True) if rec["models"] else "none"
    return [f"{indent}stage {rec['stage']}  fingerprint {rec['fingerprint']}",
            f"{indent}parents {', '.join(rec['parents']) or 'none'}",
            f"{indent}rows in {rec['rows_in']}  out {rec['rows_out']}  drops {drops}  wall {rec['wall_s']:.2f}s",
            *([_usage_line(rec["stats"], indent)] if rec.get("stats") else []),
            f"{indent}models {models}",
            f"{indent}git {rec['git_sha']}  created {rec['created_at']}"]


def _usage_line(stats: dict, indent: str) -> str:
    return (f"{indent}usage calls {stats.get('calls', 0)}  tokens {stats.get('prompt_tokens', 0)} prompt + "
            f"{stats.get('completion_tokens', 0)} completion  engine {stats.get('engine_s', 0):.2f}s  "
            f"commit {stats.get('commit_s', 0):.2f}s"
            + (f"  on {stats['engine']}" if stats.get("engine") else "")
            + (f"  precision {stats['precision']}" if stats.get("precision") else ""))


def _funnel(args: argparse.Namespace, store: Store) -> int:
    """The funnel of a recipe: every stage's rows, drops, calls, tokens and seconds, and the cost
    per accepted pair (flows/report_funnel.py; the run report shows the same table)."""
    from flows.report_funnel import funnel_rows, funnel_section

    lineage = store.read(LINEAGE_TABLE) if store.exists(LINEAGE_TABLE) else pl.DataFrame()
    rows = funnel_rows(lineage, recipe=args.name)
    if rows.is_empty():
        raise StoreError(f"no completed stage of a recipe named {args.name!r} in this store; `prefmill datasets list` "
                         "shows the tables (a recipe's tables start with its name)")
    if args.json:
        _emit({"recipe": args.name, "stages": rows.to_dicts()})
        return 0
    sec = funnel_section(lineage, recipe=args.name)
    print(f"funnel of recipe {args.name}: {sec.text}")
    header, body = sec.tables[0]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    for line in [header, *body]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
    return 0


# -- list -------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    store = _open(args)
    rows = []
    for name in store.tables(include_internal=True):
        ref = store.ref(name)
        rec = _lineage_at(store, ref) if name != LINEAGE_TABLE else None
        rows.append({"table": name, "kind": store.kind(name), "version": ref.version, "rows": store.count(ref),
                     "complete": rec is not None, "stage": rec["stage"] if rec else None})
    if args.json:
        _emit({"store": str(store.root), "tables": rows})
        return 0
    if not rows:
        print(f"store {store.root}: no tables yet")
        return 0
    w = max(len(r["table"]) for r in rows)
    print(f"{'TABLE':<{w}}  {'KIND':<10} {'VERSION':>7} {'ROWS':>10}  STATUS")
    for r in rows:
        status = (f"complete ({r['stage']})" if r["complete"] else
                  "internal" if r["table"] in RESERVED else "in progress / no completion record")
        print(f"{r['table']:<{w}}  {r['kind']:<10} {r['version']:>7} {r['rows']:>10}  {status}")
    return 0


# -- log --------------------------------------------------------------------------------
def cmd_log(args: argparse.Namespace) -> int:
    store = _open(args)
    if args.funnel:
        return _funnel(args, store)
    TableRef.parse(args.name)
    kind = store.kind(args.name)
    recs = {int(r["version"]): decode(r) for r in lineage_of(store, args.name).iter_rows(named=True)}
    versions = []
    for h in sorted(store.history(args.name), key=lambda h: h["version"]):
        meta = {k: v for k, v in h.items() if k in ("stage", "run", "writer")}
        versions.append({"version": h["version"], "operation": h.get("operation"), "timestamp": _ts(h.get("timestamp")),
                         "rows_added": (h.get("operationMetrics") or {}).get("num_added_rows"), **meta,
                         "complete": h["version"] in recs, "lineage": recs.get(h["version"])})
    if args.json:
        _emit({"table": args.name, "kind": kind, "versions": versions})
        return 0
    print(f"{args.name} ({kind}), versions 0..{versions[-1]['version']}")
    pending: list[dict] = []

    def flush() -> None:
        if pending:
            lo, hi = pending[0]["version"], pending[-1]["version"]
            span = f"v{lo}" if lo == hi else f"v{lo}..v{hi}"
            stages = sorted({p.get("stage") or "?" for p in pending})
            print(f"  {span}: {len(pending)} commit(s) ({', '.join(stages)}), no completion record")
            pending.clear()

    for v in versions:
        if not v["complete"]:
            pending.append(v)
            continue
        flush()
        print(f"v{v['version']}  {v['operation']}  {v['timestamp']}  COMPLETE")
        print("\n".join(_lineage_lines(v["lineage"], "    ")))
    flush()
    return 0


# -- show -------------------------------------------------------------------------------
def cmd_show(args: argparse.Namespace) -> int:
    store = _open(args)
    name, _ = TableRef.parse(args.ref)
    if name in RESERVED and not store.exists(name):
        print(f"{name}: no rows yet (nothing has been {'quarantined' if name == QUARANTINE_TABLE else 'completed'})")
        return 0
    ref = store.ref(args.ref)
    kind = store.kind(ref.name)
    head = store.scan(ref).head(args.rows).collect()
    schema = {c: str(t) for c, t in store.scan(ref).collect_schema().items()}
    rec = _lineage_at(store, ref) if ref.name != LINEAGE_TABLE else None
    rows = store.count(ref)
    if args.json:
        _emit({"ref": str(ref), "kind": kind, "rows": rows, "schema": schema, "lineage": rec, "head": head.to_dicts()})
        return 0
    print(f"{ref}  kind {kind}  rows {rows}")
    print("schema: " + ", ".join(f"{c} {t}" for c, t in schema.items()))
    if rec:
        print("lineage:")
        print("\n".join(_lineage_lines(rec)))
    else:
        print("lineage: none (no completion record for this version)")
    with pl.Config(tbl_rows=args.rows, fmt_str_lengths=60, tbl_width_chars=160):
        print(head)
    return 0


# -- diff -------------------------------------------------------------------------------
def cmd_diff(args: argparse.Namespace) -> int:
    store = _open(args)
    ra, rb = store.ref(args.a), store.ref(args.b)
    ka, kb = store.kind(ra.name), store.kind(rb.name)
    if ka != kb:
        raise StoreError(f"cannot diff {ra} ({ka}) with {rb} ({kb}); compare two versions of tables of one kind")
    key = get_schema(ka).key if ka in SCHEMAS else store.scan(ra).collect_schema().names()[0]
    sa, sb = store.scan(ra).collect_schema(), store.scan(rb).collect_schema()
    schema = {"added": {c: str(t) for c, t in sb.items() if c not in sa},
              "removed": {c: str(t) for c, t in sa.items() if c not in sb},
              "changed": {c: [str(sa[c]), str(sb[c])] for c in sa if c in sb and sa[c] != sb[c]}}
    common = [c for c in sa if c in sb and sa[c] == sb[c]]
    if key not in common:
        raise StoreError(f"key column {key!r} differs between {ra} and {rb}; diff versions whose key column matches")
    fa = store.scan(ra).select(pl.col(key), pl.struct(common).hash().alias("_h")).collect()
    fb = store.scan(rb).select(pl.col(key), pl.struct(common).hash().alias("_h")).collect()
    added = fb.join(fa, on=key, how="anti").get_column(key).sort()
    removed = fa.join(fb, on=key, how="anti").get_column(key).sort()
    both = fa.join(fb, on=key, how="inner", suffix="_b")
    changed = both.filter(pl.col("_h") != pl.col("_h_b")).get_column(key).sort()
    out = {"a": str(ra), "b": str(rb), "kind": ka, "key": key, "rows_a": fa.height, "rows_b": fb.height,
           "added": added.len(), "removed": removed.len(), "changed": changed.len(), "unchanged": both.height - changed.len(),
           "added_keys": added.head(args.rows).to_list(), "removed_keys": removed.head(args.rows).to_list(),
           "changed_keys": changed.head(args.rows).to_list(), "schema": schema,
           "lineage_a": _lineage_at(store, ra), "lineage_b": _lineage_at(store, rb)}
    if args.json:
        _emit(out)
        return 0
    print(f"{ra} -> {rb}  ({ka}, key {key})")
    print(f"rows {fa.height} -> {fb.height}: +{out['added']} added, -{out['removed']} removed, "
          f"~{out['changed']} changed, {out['unchanged']} unchanged")
    for label, keys in (("+", out["added_keys"]), ("-", out["removed_keys"]), ("~", out["changed_keys"])):
        for k in keys:
            print(f"  {label} {k}")
    if any(schema.values()):
        print("schema: " + "; ".join(f"{what} {', '.join(map(str, cols))}" for what, cols in schema.items() if cols))
    else:
        print("schema: unchanged")
    for side, r in (("a", ra), ("b", rb)):
        rec = out[f"lineage_{side}"]
        print(f"lineage of {r}:" if rec else f"lineage of {r}: none (no completion record)")
        if rec:
            print("\n".join(_lineage_lines(rec)))
    return 0

