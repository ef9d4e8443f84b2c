"""From user input to a recipe: `--set key.path=value` overrides and validation errors explained in
one line (the key path as written, the problem, and for an unknown key the closest valid one).

    data = apply_overrides(yaml.safe_load(text), ["sampling.n=8"])
    explain(err, "recipes/x.yaml", data, root=Recipe)   # -> "recipes/x.yaml: unknown key samplng; did you mean 'sampling'?"
"""
from __future__ import annotations

import difflib
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from generators.scorers.base import ScorerConfigBase
from generators.scorers.config import config_classes


class RecipeError(ValueError):
    """A recipe cannot be read or validated."""


def _set_path(data: dict, path: str, value: Any) -> None:
    keys = path.split(".")
    node = data
    for i, k in enumerate(keys[:-1]):
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise RecipeError(f"--set {path}: {'.'.join(keys[:i + 1])} is a list; use an index 0..{len(node) - 1}")
            node = node[int(k)]
            continue
        if not isinstance(node.get(k, {}), (dict, list)):
            raise RecipeError(f"--set {path}: {'.'.join(keys[:i + 1])} is a value, not a section")
        node = node.setdefault(k, {})
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(f"--set {path}: use an index 0..{len(node) - 1}")
        node[int(last)] = value
    else:
        node[last] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            raise RecipeError(f"--set {item!r}: write key.path=value, e.g. --set sampling.n=8")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_path(data, path.strip(), value)
    return data


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        # scoring entries are validated through the scorer-kind registry
        return list(config_classes()) if annotation is ScorerConfigBase else [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def _pick_tagged(models: list[type[BaseModel]], node: Any) -> list[type[BaseModel]]:
    """Of several union members, the one whose `kind` / `trainer` default the input names."""
    if len(models) < 2 or not isinstance(node, dict):
        return models
    picked = [m for m in models for tag in ("kind", "trainer")
              if tag in m.model_fields and tag in node and m.model_fields[tag].default == node[tag]]
    return picked or models


def _model_at(loc: tuple, data: Any, root: type[BaseModel]) -> type[BaseModel] | None:
    """The model that owns the last key of an error location (walks lists and tagged unions,
    following the input data to pick a union member)."""
    models: list[type[BaseModel]] = [root]
    node = data
    for part in loc[:-1]:
        if isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            models = _pick_tagged(models, node)
            continue
        owners = [m for m in models if part in m.model_fields]
        if owners:
            models = _models_in(owners[0].model_fields[part].annotation)
            node = node.get(part) if isinstance(node, dict) else None
            models = _pick_tagged(models, node)
            continue
        tagged = [m for m in models if any(f.default == part for f in m.model_fields.values())]
        if not tagged:
            return None
        models = tagged[:1]
    return models[0] if models else None


def _shown_path(loc: tuple, data: Any) -> str:
    """The error location as the user wrote it: union tags pydantic inserts are left out."""
    parts, node = [], data
    for i, part in enumerate(loc):
        if isinstance(node, list) and isinstance(part, int):
            parts.append(str(part))
            node = node[part] if part < len(node) else None
        elif isinstance(node, dict) and part in node or i == len(loc) - 1 or not isinstance(node, dict):
            parts.append(str(part))
            node = node.get(part) if isinstance(node, dict) else None
    return ".".join(parts)


def explain(err: ValidationError, source: str, data: Any = None, *, root: type[BaseModel]) -> str:
    """One line for the first validation problem: where (as the user wrote the key path), what, and
    for an unknown key the closest valid key of the section that owns it (`root` = the top model)."""
    e = err.errors()[0]
    loc = tuple(e["loc"])
    path = _shown_path(loc, data) if loc else ""
    if e["type"] == "extra_forbidden":
        parent = _model_at(loc, data, root)
        hint = ""
        if parent is not None:
            close = difflib.get_close_matches(str(loc[-1]), list(parent.model_fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(parent.model_fields)}"
        return f"{source}: unknown key {path}{hint}"
    more = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    msg = e["msg"].removeprefix("Value error, ")
    got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], (dict, list)) else ""
    return f"{source}: {path + ': ' if path else ''}{msg}{got}{more}"
