"""Seeded LoRA adapters for tests, written by PEFT itself (so the format is PEFT's own)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def make_adapter(path: Path, base: str | Path, seed: int, r: int = 4, alpha: float = 8,
                 targets: tuple[str, ...] = ("q_proj", "v_proj"), rslora: bool = False,
                 modules_to_save: list[str] | None = None, scale: float = 0.2,
                 dtype: torch.dtype = torch.float32, **config: object) -> Path:
    """A PEFT LoRA adapter of ``base`` at ``path`` with seeded random A and B (B is not left
    at zero, so the adapter changes the model), saved with ``save_pretrained``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), use_rslora=rslora,
                     modules_to_save=modules_to_save, lora_dropout=0.0, **config)
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
            elif "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    peft_model.to(dtype).save_pretrained(path)
    return Path(path)


def edit_config(path: Path, **changes: object) -> Path:
    """Change keys of an adapter's adapter_config.json in place."""
    file = Path(path) / "adapter_config.json"
    config = json.loads(file.read_text())
    config.update(changes)
    file.write_text(json.dumps(config))
    return Path(path)
