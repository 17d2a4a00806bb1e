"""Synthetic tasks of the embedded zoo: one skill, two surface forms.

L1 writes numbers with the digits ``0-9``; L2 writes the same numbers with ``a-j`` (0 -> a,
..., 9 -> j): same content, different symbols. Every example is a ``prompt`` and an ``answer``
terminated by a newline; a model is scored on the answer given the prompt. Arithmetic answers
are written least-significant digit first (12+39= -> 15 for 51): a left-to-right decoder then
produces each carry before it is needed, which took L1 addition from 14% to 60% exact match
for the same 500 fine-tuning steps.

====================  ========================  ================================
task                  example (prompt|answer)   who learns it
====================  ========================  ================================
count_l1 / count_l2   ``C37>`` | ``38``          base (both forms)
copy                  ``K4fa1>`` | ``4fa1``      base
to_l2 / to_l1         ``T37>`` | ``dh``          base (the L1 <-> L2 dictionary)
maxmin_l1             ``M12,5,47>`` | ``47,5``   base
add_l1  (task A)      ``12+34=`` | ``64``        expert A (the skill, in L1)
maxmin_l2 (task B)    ``Mbc,f,eh>`` | ``eh,f``   expert B (the L2 form, no arithmetic)
sub_l1                ``45-12=`` | ``33``        expert C (a second skill, in L1)
add_l2  (task C)      ``bc+de=`` | ``ge``        nobody: the composite of A's skill and B's form
====================  ========================  ================================

Splits: each task's problems are assigned to train / validation / test by a hash of the
problem itself, so the splits never overlap and do not depend on sampling order.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Example", "TASKS", "L1", "L2", "to_l2", "split_of", "sample", "CHARS"]

L1 = "0123456789"
L2 = "abcdefghij"
CHARS = L1 + L2 + "CKTUM+-=>,\n"  # every character a prompt or answer can contain
_TO_L2 = str.maketrans(L1, L2)
_TO_L1 = str.maketrans(L2, L1)


def to_l2(text: str) -> str:
    return text.translate(_TO_L2)


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str  # without the terminating newline

    def as_dict(self) -> dict[str, str]:
        return {"prompt": self.prompt, "answer": self.answer}


def _num(rng: random.Random, hi: int = 99) -> int:
    return rng.randint(0, hi)


def _count(form: Callable[[str], str]) -> Callable[[random.Random], Example]:
    def make(rng: random.Random) -> Example:
        n = _num(rng, 98)
        return Example(f"C{form(str(n))}>", form(str(n + 1)))
    return make


def _copy(rng: random.Random) -> Example:
    s = "".join(rng.choice(L1 + L2) for _ in range(rng.randint(1, 5)))
    return Example(f"K{s}>", s)


def _translate(to: str) -> Callable[[random.Random], Example]:
    def make(rng: random.Random) -> Example:
        n = str(_num(rng, 999))
        return Example(f"T{n}>", to_l2(n)) if to == "l2" else Example(f"U{to_l2(n)}>", n)
    return make


def _maxmin(form: Callable[[str], str]) -> Callable[[random.Random], Example]:
    def make(rng: random.Random) -> Example:
        xs = [_num(rng) for _ in range(3)]
        prompt = "M" + ",".join(form(str(x)) for x in xs) + ">"
        return Example(prompt, f"{form(str(max(xs)))},{form(str(min(xs)))}")
    return make


def _arith(op: str, form: Callable[[str], str]) -> Callable[[random.Random], Example]:
    def make(rng: random.Random) -> Example:
        x, y = _num(rng), _num(rng)
        if op == "-":  # the inverse of addition: (x + y) - y = x, as many problems as "+"
            x, y, z = x + y, y, x
        else:
            z = x + y
        return Example(f"{form(str(x))}{op}{form(str(y))}=", form(str(z)[::-1]))
    return make


def _same(s: str) -> str:
    return s


TASKS: dict[str, Callable[[random.Random], Example]] = {
    "count_l1": _count(_same),
    "count_l2": _count(to_l2),
    "copy": _copy,
    "to_l2": _translate("l2"),
    "to_l1": _translate("l1"),
    "maxmin_l1": _maxmin(_same),
    "add_l1": _arith("+", _same),
    "maxmin_l2": _maxmin(to_l2),
    "sub_l1": _arith("-", _same),
    "add_l2": _arith("+", to_l2),
}

SPLIT_FRACTIONS = {"validation": 0.1, "test": 0.1}  # the rest is train


def split_of(ex: Example) -> str:
    """Deterministic split of a problem, from a hash of its prompt (L2 prompts are hashed in
    their L1 spelling, so the same problem lands in the same split in both forms)."""
    key = ex.prompt.translate(_TO_L1).encode()
    u = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
    if u < SPLIT_FRACTIONS["validation"]:
        return "validation"
    if u < SPLIT_FRACTIONS["validation"] + SPLIT_FRACTIONS["test"]:
        return "test"
    return "train"


def sample(task: str, split: str, n: int, seed: int, unique: bool = True) -> list[Example]:
    """``n`` examples of ``task`` from ``split``; distinct problems when ``unique`` (and the
    split has that many), otherwise with repetition (training streams)."""
    rng = random.Random(f"{task}:{split}:{seed}")
    make = TASKS[task]
    out: list[Example] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < n and tries < 200 * n:
        tries += 1
        ex = make(rng)
        if split_of(ex) != split or (unique and ex.prompt in seen):
            continue
        seen.add(ex.prompt)
        out.append(ex)
    if len(out) < n:
        raise ValueError(f"task {task!r} has only {len(out)} distinct {split} problems, "
                         f"{n} requested")
    return out
