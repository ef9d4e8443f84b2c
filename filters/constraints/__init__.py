"""Verifiable instruction constraints (IFEval/IFBench families): the catalogue of kinds and
phrasings, split definitions for honest evals, format checks and the strict reviewer layer.

Import through `filters.instructions` (the stable surface); the modules here are:
text        word/sentence/paragraph/list measurements
phrasings   several phrasings per kind
catalogue   kinds, families, parameter domains per split, conflicts
checks      FORMAT (literal check) and SUBSTANCE (degenerate-answer rules) per kind
core        validate, describe, check, loads/dumps
splits      split_catalogue, sample_constraints(split=...), novelty
strict      check_strict: empty / truncated / echo / off_topic gates + per-kind checks
"""
