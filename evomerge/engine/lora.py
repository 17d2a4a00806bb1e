"""PEFT LoRA adapter directories, read and checked: ``adapter_config.json`` and the header of
``adapter_model.safetensors``. For every module an adapter targets ::

    W = W0 + s B @ A        A (r, in), B (out, r),  s = alpha / r   (alpha / sqrt(r) with rsLoRA)

with r and alpha per module from ``rank_pattern`` / ``alpha_pattern`` where they name it, and
each tensor saved for a ``modules_to_save`` module replaces the base's. A PEFT method other than
LoRA or a LoRA variant evomerge does not compute (DoRA, trained biases, base-modifying
initialisations such as PiSSA), a rank or shape that does not fit the base, a module the base
does not have, or an adapter of another architecture is one sentence (:class:`ModelError`,
exit 2) before any weight is read. ``BASE+ADAPTER`` as a source model is
:class:`~evomerge.engine.lora_source.LoraSource`.

The adapter's numbers are W0 + s B A formed in the merge's compute dtype; mergekit first merges
the adapter into a stored copy of the base (in the base's dtype unless ``lora_merge_dtype`` says
otherwise), so in bfloat16 the two differ by one rounding of the adapted weights, and in float32
they agree within 1e-6 (tested).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evomerge.engine.config_io import brief
from evomerge.engine.json_data import confined, read_json
from evomerge.engine.lowrank import LowRank
from evomerge.engine.sources import ModelSource, TensorEntry, read_header, read_tensor
from evomerge.errors import ConfigError, ModelError

__all__ = ["LoraAdapter", "AdapterWeights", "Factor", "split_adapter_ref", "is_adapter_dir",
           "read_adapter_config", "ADAPTER_CONFIG", "ADAPTER_WEIGHTS"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_FACTOR = re.compile(r"^base_model\.model\.(?P<module>[\w.]+)\.lora_(?P<side>A|B)\.weight$")
_MAX_CONFIG = 1 << 20  # bytes; a LoRA config is a few kB
# |alpha / r| bound: trained adapters scale by ~0.1-100; 1e6 keeps s * B @ A far from float32's
# range (alpha 1e308 overflowed addmm mid-merge) while refusing no real adapter.
_MAX_SCALE = 1e6
# Keys of adapter_config.json that evomerge reads, and keys that do not change the weights
# (training, bookkeeping, initialisation data). Any other key set to a true value is a variant
# evomerge does not compute, and the adapter is refused naming it.
_READ = {"peft_type", "r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern",
         "target_modules", "modules_to_save", "init_lora_weights", "base_model_name_or_path",
         "use_dora", "bias", "fan_in_fan_out", "auto_mapping"}
_HARMLESS = {"revision", "inference_mode", "peft_version", "task_type", "lora_dropout",
             "layers_pattern", "layers_to_transform", "exclude_modules", "megatron_core",
             "qalora_group_size", "ensure_weight_tying", "corda_config", "eva_config",
             "loftq_config", "lora_ga_config"}
# initialisations that leave the base as it is (the others -- PiSSA, OLoRA, CorDA, LoftQ,
# LoRA-GA, MiCA -- subtract the initial B A from the base, so the adapter needs that base)
_PLAIN_INIT = (True, False, None, "gaussian", "eva", "orthogonal")
_PLAIN_PATTERN = re.compile(r"^[\w.\-]+$")


def split_adapter_ref(ref: str, field: str = "model") -> tuple[str, str] | None:
    """``(base, adapter)`` of a ``BASE+ADAPTER`` reference, None for a plain path.

    Raises:
        ConfigError: more than one ``+``, or an empty side.
    """
    if "+" not in ref:
        return None
    parts = ref.split("+")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ConfigError(f"{field} {ref!r}: a model reference is a directory or BASE+ADAPTER "
                          "(one '+' between a base model and a LoRA adapter directory).")
    return parts[0], parts[1]


def is_adapter_dir(path: str | Path) -> bool:
    """A directory with an ``adapter_config.json`` and no ``config.json`` (a PEFT adapter)."""
    p = Path(path).expanduser()
    return (p / ADAPTER_CONFIG).is_file() and not (p / "config.json").is_file()


def read_adapter_config(path: Path, ref: str, field: str) -> dict[str, Any]:
    file = path / ADAPTER_CONFIG
    if not file.is_file():
        what = "a model directory" if (path / "config.json").is_file() else "a directory"
        raise ModelError(f"{field} {ref!r} has no {ADAPTER_CONFIG}: it is {what}, not a "
                         "PEFT LoRA adapter." if path.is_dir() else
                         f"{field} {ref!r}: no such adapter directory.")
    what = f"{field} {ref!r}: {ADAPTER_CONFIG}"
    config = read_json(confined(path, file, what), what, _MAX_CONFIG)
    if not isinstance(config, dict):
        raise ModelError(f"{field} {ref!r}: {ADAPTER_CONFIG} is not a JSON object.")
    return config


@dataclass(frozen=True)
class Factor:
    """Where one module's factors live and its scaling: A (r, in), B (out, r)."""

    a: TensorEntry
    b: TensorEntry
    scale: float

    @property
    def rank(self) -> int:
        return self.a.shape[0]


@dataclass(frozen=True)
class AdapterWeights:
    """An adapter's factors and replaced tensors, read: small next to the base."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]]  # weight name -> (A, B, s)
    replaced: dict[str, torch.Tensor]                               # modules_to_save tensors

    def value(self, name: str, base: torch.Tensor) -> LowRank | torch.Tensor:
        """Tensor ``name`` of the adapted model over ``base`` (the base's tensor)."""
        if name in self.replaced:
            return self.replaced[name]
        f = self.factors.get(name)
        return LowRank(base) if f is None else LowRank(base, f[0], f[1], f[2])

    @property
    def nbytes(self) -> int:
        ts = [t for a, b, _ in self.factors.values() for t in (a, b)] + list(self.replaced.values())
        return sum(t.numel() * t.element_size() for t in ts)


class LoraAdapter:
    """A PEFT LoRA adapter directory: its config checked and its tensors indexed (headers
    only; see the module docstring).

    Args:
        ref: the adapter directory as written.
        field: what named it, for messages.
    """

    def __init__(self, ref: str, field: str = "adapter") -> None:
        self.ref, self.field = ref, field
        self.path = Path(ref).expanduser()
        self.config = read_adapter_config(self.path, ref, field)
        self._check_variant()
        entries = self._entries()
        self.factors, self.replaced = self._index(entries)

    def _fail(self, text: str) -> ModelError:
        return ModelError(f"{self.field} {self.ref!r}: {text}")

    def _check_variant(self) -> None:
        c = self.config
        kind = c.get("peft_type")
        if kind != "LORA":
            raise self._fail(f"a {kind} adapter (peft_type); evomerge reads LoRA adapters only.")
        if c.get("use_dora"):
            raise self._fail("a DoRA adapter (use_dora: true); evomerge does not merge DoRA "
                             "(its weights are renormalized per column, not W0 + s B A).")
        if c.get("bias", "none") != "none":
            raise self._fail(f"it trains biases (bias: {c['bias']!r}), which evomerge does "
                             "not read; use adapters saved with bias 'none'.")
        if c.get("fan_in_fan_out"):
            raise self._fail("it stores transposed factors (fan_in_fan_out: true, GPT-2 "
                             "Conv1D layers), which evomerge does not read.")
        init = c.get("init_lora_weights", True)
        if init not in _PLAIN_INIT:
            raise self._fail(f"its initialisation {init!r} changes the base weights, so the "
                             "adapter needs that changed base; convert it to a plain LoRA "
                             "first (PEFT's path_initial_model_for_weight_conversion).")
        for key, value in c.items():
            if key not in _READ and key not in _HARMLESS and value not in (None, False, {}, [], ""):
                raise self._fail(f"{ADAPTER_CONFIG} sets {key} = {value!r}, a LoRA variant "
                                 "evomerge does not compute; it merges plain LoRA adapters.")
        for key in ("rank_pattern", "alpha_pattern"):
            if not isinstance(c.get(key) or {}, dict):
                raise self._fail(f"{key} = {brief(c[key], 40)} in {ADAPTER_CONFIG} is not a "
                                 "mapping of module names to values.")
            for pattern in (c.get(key) or {}):
                if not _PLAIN_PATTERN.match(str(pattern)):
                    raise self._fail(f"{key} key {pattern!r} is a regular expression; "
                                     "evomerge matches module names (a.b.c) only.")

    def _entries(self) -> dict[str, TensorEntry]:
        file = self.path / ADAPTER_WEIGHTS
        if not file.is_file():
            pickles = [p.name for p in self.path.glob("adapter_model.bin")]
            hint = (" It has only a pickle checkpoint (adapter_model.bin), which evomerge does "
                    "not load; save it with safe_serialization=True." if pickles else "")
            raise self._fail(f"no {ADAPTER_WEIGHTS}.{hint}")
        return read_header(confined(self.path, file, f"{self.field} {self.ref!r}: "
                                                     f"{ADAPTER_WEIGHTS}", weights=True))

    def _scale(self, module: str, rank: int) -> float:
        """s = alpha / r (alpha / sqrt(r) with rsLoRA) of ``module``, whose factors have rank
        ``rank``: r a whole number >= 1 equal to that rank (r = 0 divided by zero), alpha a
        number whose scale is finite and at most _MAX_SCALE in size.

        Raises:
            ModelError: naming the adapter field (``r``, ``lora_alpha`` or its pattern) and value.
        """
        c = self.config
        r_key, r = _pattern_value(c.get("rank_pattern") or {}, module, "r", c.get("r", 8))
        a_key, alpha = _pattern_value(c.get("alpha_pattern") or {}, module, "lora_alpha",
                                      c.get("lora_alpha", 8))
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise self._fail(f"{r_key} = {brief(r, 40)} in {ADAPTER_CONFIG} is not a LoRA rank "
                             f"(a whole number of at least 1; module {module}).")
        if r != rank:
            raise self._fail(f"module {module} has rank {rank} in its weights but {r_key} = "
                             f"{brief(r, 40)} in {ADAPTER_CONFIG}.")
        try:
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
                raise TypeError
            scale = float(alpha) / (math.sqrt(rank) if c.get("use_rslora") else rank)
        except (TypeError, OverflowError):  # OverflowError: an integer beyond float's range
            scale = math.inf
        if not math.isfinite(scale) or abs(scale) > _MAX_SCALE:
            raise self._fail(f"{a_key} = {brief(alpha, 40)} in {ADAPTER_CONFIG} is not a "
                             f"usable LoRA alpha (a number whose scale {a_key} / r is at most "
                             f"1e6 in size; module {module}).")
        return scale

    def _index(self, entries: dict[str, TensorEntry]
               ) -> tuple[dict[str, Factor], dict[str, TensorEntry]]:
        sides: dict[str, dict[str, TensorEntry]] = {}
        replaced = {}
        for key, entry in entries.items():
            m = _FACTOR.match(key)
            if m:
                sides.setdefault(m["module"], {})[m["side"]] = entry
            elif not key.startswith(_PREFIX) or ".lora_" in key or "lora_magnitude" in key:
                raise self._fail(f"tensor {key!r} is not a LoRA factor (lora_A/lora_B) that "
                                 "evomerge reads (embedding LoRA and other variants are not "
                                 "supported).")
            else:
                replaced[key[len(_PREFIX):]] = entry
        factors = {}
        for module, ab in sides.items():
            if set(ab) != {"A", "B"}:
                raise self._fail(f"module {module} has lora_{next(iter(ab))} but no "
                                 f"lora_{'B' if 'A' in ab else 'A'}.")
            a, b = ab["A"], ab["B"]
            if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
                raise self._fail(f"module {module} has lora_A {list(a.shape)} and lora_B "
                                 f"{list(b.shape)}, which are not (r, in) and (out, r) of one "
                                 "rank.")
            if not (a.dtype.is_floating_point and b.dtype.is_floating_point):
                raise self._fail(f"module {module} has non-float factors.")
            factors[f"{module}.weight"] = Factor(a, b, self._scale(module, a.shape[0]))
        if not factors and not replaced:
            raise self._fail(f"{ADAPTER_WEIGHTS} holds no LoRA factors.")
        return factors, replaced

    def check_base(self, base: ModelSource) -> None:
        """Every module and replaced tensor must exist in ``base`` with a fitting shape.

        Raises:
            ModelError: an adapter of another architecture or size.
        """
        made_for = (self.config.get("auto_mapping") or {}).get("base_model_class")
        named = self.config.get("base_model_name_or_path")
        if made_for and made_for != base.architecture:
            raise self._fail(f"it was trained on a {made_for} model ({named!r}) but the base "
                             f"{base.ref!r} is {base.architecture}.")
        for name, f in self.factors.items():
            if name not in base:
                raise self._fail(f"it targets {name.removesuffix('.weight')}, which the base "
                                 f"{base.ref!r} ({base.architecture}, {base.num_layers} layers) "
                                 f"does not have: an adapter of another model ({named!r}).")
            want = base.shape(name)
            if want != (f.b.shape[0], f.a.shape[1]):
                raise self._fail(f"{name.removesuffix('.weight')} has lora_A {list(f.a.shape)} "
                                 f"and lora_B {list(f.b.shape)}, which do not fit the weight "
                                 f"{list(want)} of the base {base.ref!r} (rank or shape "
                                 f"mismatch: an adapter of another model, {named!r}?).")
        for name, e in self.replaced.items():
            if name not in base or base.shape(name) != e.shape:
                have = list(base.shape(name)) if name in base else "no such tensor"
                raise self._fail(f"it saves {name} {list(e.shape)} (modules_to_save) but the "
                                 f"base {base.ref!r} has {have}.")

    def read(self, entry: TensorEntry, name: str, device: str | torch.device = "cpu"
             ) -> torch.Tensor:
        return read_tensor(entry, self.ref, name, device)

    def load(self, device: str | torch.device = "cpu", pin: bool = False) -> AdapterWeights:
        """Read every factor and replaced tensor onto ``device`` (pinned if ``pin``)."""
        def read(e: TensorEntry, n: str) -> torch.Tensor:
            t = self.read(e, n, device)
            return t.pin_memory() if pin else t
        factors = {n: (read(f.a, n), read(f.b, n), f.scale) for n, f in self.factors.items()}
        return AdapterWeights(factors, {n: read(e, n) for n, e in self.replaced.items()})

    @property
    def nbytes(self) -> int:
        return (sum(f.a.nbytes + f.b.nbytes for f in self.factors.values())
                + sum(e.nbytes for e in self.replaced.values()))


def _pattern_value(patterns: dict[str, Any], module: str, field: str, default: Any
                   ) -> tuple[str, Any]:
    """PEFT's rank/alpha pattern lookup: (where the value came from, the value) of the first
    key that is ``module`` or a dotted suffix of it (keys are checked to be plain names, see
    LoraAdapter), else (``field``, ``default``)."""
    for key, value in patterns.items():
        if module == key or module.endswith("." + key):
            return f"{'rank' if field == 'r' else 'alpha'}_pattern[{key!r}]", value
    return field, default
