"""Skills for the real-model experiment (bench/real_model.py): two experts fine-tuned from
SmolLM2-135M-Instruct, and a composite task neither was trained on.

* ``add``    "What is 47 + 85? Reply with the number only."   -> "132"  (arithmetic skill)
* ``words``  "Write 132 in English words. Reply with the words only." -> "one hundred
             thirty-two"  (a language / format skill)
* ``both``   "What is 47 + 85? Reply in English words only."   -> "one hundred thirty-two"
             (the composite: the analogue of math asked and answered in Japanese)

A second pair (``--pair final``) swaps the words skill for an output format:

* ``final``  "Write 132 in the final-answer format." -> "#### 132"  (GSM8K's final-answer line)
* ``both``   "What is 47 + 85? Reply in the final-answer format." -> "#### 132"

Examples are drawn from disjoint operand pairs per split (a pair in one split never appears in
another), seeded. The experts are full fine-tunes of the decoder layers (embeddings and head
frozen, so the tied head stays the base's), AdamW, a fixed number of steps.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import torch

ONES = "zero one two three four five six seven eight nine".split()
TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
PAIRS = {"words": ("add", "words", "both"), "final": ("add", "final", "both")}
SKILLS = PAIRS["words"]


def pair_tag(pair: str) -> str:
    """The suffix naming a pair's tasks, studies and results ('' for the first pair, words)."""
    return "" if pair == "words" else f"_{pair}"


SPLITS = {"train": 0.7, "validation": 0.15, "test": 0.15}


def in_words(n: int) -> str:
    """0 <= n < 1000 in English words: 132 -> 'one hundred thirty-two'."""
    h, r = divmod(n, 100)
    out = [f"{ONES[h]} hundred"] if h else []
    if r >= 20:
        out.append(TENS[r // 10] + (f"-{ONES[r % 10]}" if r % 10 else ""))
    elif r >= 10:
        out.append(TEENS[r - 10])
    elif r or not h:
        out.append(ONES[r])
    return " ".join(out)


def example(skill: str, a: int, b: int, pair: str = "words") -> dict[str, str]:
    """One prompt/answer pair of ``skill`` (of skill pair ``pair``) for operands ``a``, ``b``.
    Besides the pairs' skills: ``sub``, ``reverse``, ``compare`` (more skills for LoRA
    adapters, bench/lora_real.py), and the composites by name, ``add_words`` and
    ``add_final`` (``both`` of each pair)."""
    if skill in ("add_words", "add_final"):
        return example("both", a, b, skill.removeprefix("add_"))
    if skill == "sub":
        hi, lo = max(a, b), min(a, b)
        return {"prompt": f"What is {hi} - {lo}? Reply with the number only.",
                "answer": str(hi - lo)}
    if skill == "reverse":
        return {"prompt": f"Write the digits of {a + b} in reverse order. Reply with the digits "
                          "only.", "answer": str(a + b)[::-1]}
    if skill == "compare":
        return {"prompt": f"Which is larger, {a} or {b}? Reply with the number only.",
                "answer": str(max(a, b))}
    if skill == "add":
        return {"prompt": f"What is {a} + {b}? Reply with the number only.", "answer": str(a + b)}
    if skill == "words":
        return {"prompt": f"Write {a + b} in English words. Reply with the words only.",
                "answer": in_words(a + b)}
    if skill == "final":
        return {"prompt": f"Write {a + b} in the final-answer format.", "answer": f"#### {a + b}"}
    if pair == "final":
        return {"prompt": f"What is {a} + {b}? Reply in the final-answer format.",
                "answer": f"#### {a + b}"}
    return {"prompt": f"What is {a} + {b}? Reply in English words only.", "answer": in_words(a + b)}


def operand_splits(seed: int, low: int = 10, high: int = 99) -> dict[str, list[tuple[int, int]]]:
    """Every operand pair in [low, high]^2, shuffled by ``seed`` and cut into disjoint splits."""
    pairs = [(a, b) for a in range(low, high + 1) for b in range(low, high + 1)]
    random.Random(seed).shuffle(pairs)
    out, start = {}, 0
    for name, share in SPLITS.items():
        n = round(share * len(pairs)) if name != "test" else len(pairs) - start
        out[name] = pairs[start:start + n]
        start += n
    return out


def write_tasks(root: Path, seed: int, per_split: dict[str, int],
                pair: str = "words", skills: tuple[str, ...] | None = None
                ) -> dict[str, dict[str, Path]]:
    """JSONL files ``root/{skill}_{split}.jsonl`` (``per_split[split]`` examples each) for the
    skills of ``pair`` (or ``skills``); each skill draws its pairs from the same disjoint
    operand splits. Returns skill -> split -> path."""
    root.mkdir(parents=True, exist_ok=True)
    splits = operand_splits(seed)
    files: dict[str, dict[str, Path]] = {}
    for skill in skills or PAIRS[pair]:
        for split, pairs in splits.items():
            rnd = random.Random(f"{seed}:{skill}:{split}")
            chosen = rnd.sample(pairs, min(per_split[split], len(pairs)))
            path = root / f"{skill}_{split}.jsonl"
            path.write_text("".join(json.dumps(example(skill, a, b, pair)) + "\n"
                                     for a, b in chosen))
            files.setdefault(skill, {})[split] = path
    return files


def chat_batch(tok: Any, rows: list[dict[str, str]]) -> dict[str, torch.Tensor]:
    """Chat-formatted prompts + answers; loss on the answer tokens (and the end of turn)."""
    ids, labels = [], []
    for r in rows:
        prompt = tok.apply_chat_template([{"role": "user", "content": r["prompt"]}],
                                         tokenize=False, add_generation_prompt=True)
        p = tok(prompt, add_special_tokens=False).input_ids
        a = tok(r["answer"] + tok.eos_token, add_special_tokens=False).input_ids
        ids.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(map(len, ids))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return {"input_ids": torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
            "labels": torch.tensor([y + [-100] * (width - len(y)) for y in labels])}


def train_steps(model: Any, params: list, tok: Any, rows: list[dict[str, str]], *, steps: int,
                batch: int, lr: float, seed: int, name: str, log=print,
                device: str = "cpu") -> tuple[list[float], float]:
    """``steps`` AdamW steps on ``params`` over seeded chat batches of ``rows`` (a 10-step
    warm-up, then linear decay; gradients clipped at 1). Returns the per-step losses and the
    time the loop started."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10)
                                              * max(0.0, 1 - s / steps))
    rnd = random.Random(seed)
    losses, t0 = [], time.time()
    model.train()
    for step in range(steps):
        loss = model(**{k: v.to(device) for k, v in chat_batch(tok, rnd.sample(rows, batch)).items()}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(), sched.step(), opt.zero_grad()
        losses.append(round(loss.item(), 4))
        if step % 10 == 0 or step == steps - 1:
            log(f"  {name}: step {step + 1}/{steps} loss {loss:.3f} ({time.time() - t0:.0f} s)")
    return losses, t0


def fine_tune(base: Path, out: Path, train: Path, *, steps: int, batch: int = 16,
              lr: float = 1e-4, seed: int = 0, log=print, device: str = "cpu") -> dict[str, Any]:
    """Full fine-tune of ``base``'s decoder layers on ``train`` (JSONL) for ``steps`` AdamW
    steps on ``device`` (float32); saved at ``out`` in the base's dtype with its tokenizer.
    Kept if already built. Returns the training log (losses, seconds)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = out / "fine_tune.json"
    if meta.is_file():
        return json.loads(meta.read_text())
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device)
    from evomerge.engine.sources import ModelSource

    stored = ModelSource(str(base)).stored_dtype
    params = [p for n, p in model.named_parameters() if ".layers." in n]
    for n, p in model.named_parameters():
        p.requires_grad_(".layers." in n)
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    losses, t0 = train_steps(model, params, tok, rows, steps=steps, batch=batch, lr=lr,
                             seed=seed, name=out.name, log=log, device=device)
    model.eval().to("cpu", stored).save_pretrained(out)
    tok.save_pretrained(out)
    doc = {"steps": steps, "batch": batch, "lr": lr, "seconds": round(time.time() - t0, 1),
           "losses": losses, "train": str(train)}
    meta.write_text(json.dumps(doc))
    return doc
