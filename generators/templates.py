"""Prompt templates: Jinja files under generators/templates/, rendered in Jinja's sandbox.

    text = render("judge_pointwise.jinja", prompt=..., response=...)
    h = template_hash("judge_pointwise.jinja")   # goes into lineage

A template dir can be overridden per call (recipes may ship their own templates).
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

TEMPLATE_DIR = Path(__file__).with_name("templates")


class TemplateError(ValueError):
    """A template is missing or fails to render."""


@functools.cache
def _env(directory: str):
    from jinja2 import FileSystemLoader, StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(loader=FileSystemLoader(directory), undefined=StrictUndefined,
                                         keep_trailing_newline=False, autoescape=False)


def _dir(directory: str | Path | None) -> Path:
    return Path(directory) if directory is not None else TEMPLATE_DIR


def render(name: str, *, directory: str | Path | None = None, **variables) -> str:
    """Render template `name` with `variables`; undefined variables are errors, not blanks."""
    from jinja2 import TemplateError as JinjaError
    from jinja2 import TemplateNotFound

    d = _dir(directory)
    try:
        return _env(str(d)).get_template(name).render(**variables).strip()
    except TemplateNotFound:
        raise TemplateError(f"template {name!r} not found in {d}; available: {', '.join(available(d))}") from None
    except JinjaError as e:
        raise TemplateError(f"template {name!r} failed to render: {e}; check the variables passed to it") from e


def template_hash(name: str, *, directory: str | Path | None = None) -> str:
    p = _dir(directory) / name
    if not p.is_file():
        raise TemplateError(f"template {name!r} not found in {_dir(directory)}; available: {', '.join(available(directory))}")
    return hashlib.blake2b(p.read_bytes(), digest_size=8).hexdigest()


def available(directory: str | Path | None = None) -> list[str]:
    return sorted(p.name for p in _dir(directory).glob("*.jinja"))
