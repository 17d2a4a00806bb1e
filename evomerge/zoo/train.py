"""Training loops of the zoo: pretraining the base and fine-tuning experts."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from evomerge.zoo.data import encode
from evomerge.zoo.tasks import Example, sample

__all__ = ["Stage", "train"]


@dataclass(frozen=True)
class Stage:
    """One training run.

    Attributes:
        mix: task name -> sampling weight.
        steps: optimizer steps.
        lr: peak learning rate (linear warmup over 5% of steps, cosine decay to 10%).
        batch: examples per step.
        trainable: parameter-name predicate; None trains everything (a partial fine-tune
            freezes the rest, as practitioners often do).
    """

    mix: Mapping[str, float]
    steps: int
    lr: float
    batch: int = 64
    trainable: Callable[[str], bool] | None = None


def _pools(mix: Mapping[str, float], n: int, seed: int) -> dict[str, list[Example]]:
    return {t: sample(t, "train", n, seed, unique=False) for t in mix}


def train(model, stage: Stage, seed: int,
          progress: Callable[[int], None] | None = None) -> float:
    """Run ``stage`` on ``model`` (in place); returns the mean loss of the last 50 steps."""
    rng = random.Random(seed)
    pools = _pools(stage.mix, 4000, seed)
    tasks, weights = list(stage.mix), list(stage.mix.values())
    params = []
    for name, p in model.named_parameters():
        on = stage.trainable is None or stage.trainable(name)
        p.requires_grad_(on)
        if on:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=0.0, betas=(0.9, 0.98))
    warm = max(1, stage.steps // 20)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        frac = (step - warm) / max(1, stage.steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses: list[float] = []
    for step in range(stage.steps):
        batch = [rng.choice(pools[t]) for t in rng.choices(tasks, weights, k=stage.batch)]
        ids, labels, mask = encode(batch)
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 labels.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress:
            progress(step + 1)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    tail = losses[-50:]
    return sum(tail) / len(tail)
