"""Model names -> local folders, and content revisions of model folders.

    path = resolve_model("smollm2")          # the embedded default, converted on first use
    path = resolve_model("/models/my-policy")  # any existing local folder
    rev = model_revision(path)                # 12-hex content hash; enters sample keys

Nothing here touches a model hub: a name is either a built-in alias or a local folder.

The revision is a BLAKE2b hash over every top-level regular file of the folder (name + bytes):
config, tokenizer, chat template and weights, so retraining, re-quantising or editing the chat
template all change it, while moving the folder does not. Hashing large weight files costs about
a second per GB, so each file's digest is cached in `<cache>/revisions.json` under (absolute
path, size, mtime_ns) and recomputed only when one of those changes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("prefmill.models")

_SKIP = {".prefmill-complete"}
_CACHE_MIN_BYTES = 8 << 20     # cache digests of files at least this big


def cache_dir() -> Path:
    """$PREFMILL_CACHE, else ~/.cache/prefmill."""
    return Path(os.environ.get("PREFMILL_CACHE") or Path.home() / ".cache" / "prefmill")


def builtin_names() -> dict[str, str]:
    """Alias -> canonical built-in model name."""
    from generators.models.smollm2 import ALIASES

    return dict(ALIASES)


def resolve_model(name_or_path: str | Path, *, convert: bool = True) -> Path | None:
    """A built-in name (converted on first use) or an existing local folder -> that folder. With
    `convert=False` (a dry run: nothing written) a built-in name not converted yet gives None once
    its packaged weights are found, instead of converting them."""
    text = str(name_or_path)
    aliases = builtin_names()
    p = Path(text).expanduser()
    if p.is_dir():
        return p.resolve()
    if text.lower() in aliases:
        if not convert:
            from generators.models import smollm2

            if aliases[text.lower()] == smollm2.NAME and not smollm2.is_converted():
                smollm2.gguf_path()          # FileNotFoundError naming the package when it is not installed
                return None
        return pull(aliases[text.lower()])
    choices = ", ".join(sorted(set(aliases.values())))
    raise FileNotFoundError(f"model path {text!r} does not exist; pass a local folder or one of: {choices}")


def check_model_folder(folder: str | Path) -> Path:
    """The folder, if it holds a loadable model (config.json and weights); else one-line
    FileNotFoundError naming what is missing (an empty or half-copied folder fails here, not
    halfway through a run)."""
    p = Path(folder)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"model folder {str(p)!r} has no config.json (empty or partly copied?); pass a "
                                "folder written by save_pretrained, or a built-in name such as smollm2")
    try:
        cfg = json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        cfg = None
    if not isinstance(cfg, dict) or not (cfg.get("model_type") or cfg.get("architectures")):
        raise FileNotFoundError(f"model folder {str(p)!r} has a config.json without model_type (empty or partly "
                                "copied?); copy the whole folder written by save_pretrained")
    weights = [*p.glob("*.safetensors"), *p.glob("*.bin"), *p.glob("*.safetensors.index.json")]
    if not weights:
        raise FileNotFoundError(f"model folder {str(p)!r} has no weights (*.safetensors / *.bin); copy the whole "
                                "folder written by save_pretrained")
    for index in p.glob("*.index.json"):         # sharded weights: every shard the index names is there
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (OSError, ValueError):
            shards = set()
        weights += [p / name for name in sorted(shards)]
    for w in weights:
        if not w.is_file() or w.stat().st_size == 0:     # missing shard, broken link or zero bytes
            raise FileNotFoundError(f"model folder {str(p)!r} has a missing or empty weights file ({w.name}); copy "
                                    "the whole folder written by save_pretrained again")
    if not any((p / name).is_file() for name in TOKENIZER_FILES) and not any(
            any(p.glob(pattern)) for pattern in TOKENIZER_PATTERNS):
        raise FileNotFoundError(f"model folder {str(p)!r} has no tokenizer ({' / '.join(TOKENIZER_FILES[:2])}); "
                                "save the tokenizer into it too (tokenizer.save_pretrained(folder))")
    return p


# one of these makes a folder's tokenizer loadable: a fast tokenizer, a BPE / WordPiece vocab,
# Mistral's tekken, a tokenizer_config.json (byte-level and custom tokenizers), a SentencePiece
# or tiktoken model under any name
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "tekken.json",
                   "tokenizer_config.json")
TOKENIZER_PATTERNS = ("*.model", "*.tiktoken")


def pull(name: str) -> Path:
    """Make the built-in model `name` available locally (convert once) and return its folder."""
    from generators.models import smollm2

    canonical = builtin_names().get(name.lower())
    if canonical is None:
        raise FileNotFoundError(f"unknown built-in model {name!r}; expected one of: "
                                f"{', '.join(sorted(set(builtin_names().values())))}")
    if canonical == smollm2.NAME:
        return smollm2.ensure_converted()
    raise AssertionError(f"built-in {canonical!r} has no converter")


def _file_digest(path: Path, cache: dict) -> str:
    st = path.stat()
    ck = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if ck in cache:
        return cache[ck]
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    digest = h.hexdigest()
    if st.st_size >= _CACHE_MIN_BYTES:
        cache[ck] = digest
    return digest


def _load_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable revision cache %s (%s); digests will be recomputed", path, e)
        return {}


def _save_cache(path: Path, cache: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".revisions-")
    with os.fdopen(fd, "w") as f:
        json.dump(cache, f)
    os.replace(tmp, path)


def model_revision(folder: str | Path) -> str:
    """12-hex content hash of a model folder's top-level files (see the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model path {str(folder)!r} does not exist; pass a local model folder")
    cache_path = cache_dir() / "revisions.json"
    cache = _load_cache(cache_path)
    before = len(cache)
    h = hashlib.blake2b(digest_size=6)
    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.name not in _SKIP:
            h.update(f.name.encode() + b"\0" + _file_digest(f, cache).encode() + b"\0")
    if len(cache) != before:
        _save_cache(cache_path, cache)
    return h.hexdigest()
