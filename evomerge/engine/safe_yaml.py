"""Bounded YAML: every YAML document evomerge reads (recipes, chained recipes, search spaces,
recipes stored in a study) goes through :func:`load_yaml` / :func:`load_yaml_all`.

YAML aliases make a tiny file stand for a huge tree: nine levels of ``&a [*b, *b, ...]`` are
600 bytes that expand to 10^9 nodes, which cost gigabytes and minutes once anything walks them
(validation, an error message quoting the value, a dump). So before any Python object is
built, the document's parse events are counted by a C parser (libyaml where installed), with
each alias counted as the whole tree it stands for, and the document is refused when it
passes a limit:

=========== =============  ====================================================
limit       value          why
=========== =============  ====================================================
size        1 MiB of text  a 7B recipe is a few KiB; parsing stays well under a second
nodes       50,000         after alias expansion; an 80-layer DFS recipe has ~5,000
depth       64             nested collections; a recipe nests 7 deep
aliases     1,000          alias references in one stream
=========== =============  ====================================================

A key given twice in one mapping is refused too (YAML would keep the last one silently).
Every refusal is a :class:`~evomerge.errors.ConfigError` of one sentence naming the source
and the line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evomerge.errors import ConfigError

__all__ = ["load_yaml", "load_yaml_all", "read_yaml_text", "MAX_BYTES", "MAX_NODES", "MAX_DEPTH",
           "MAX_ALIASES"]

MAX_BYTES = 1024 * 1024
MAX_NODES = 50_000
MAX_DEPTH = 64
MAX_ALIASES = 1_000

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 20x faster events


@dataclass
class _Frame:
    """An open collection: its anchor, the node count when it opened, and for a mapping
    whether the next child is a key and which plain keys it has had."""

    anchor: str | None
    start: int
    mapping: bool
    key_next: bool = True
    keys: set = field(default_factory=set)


class _Budget:
    """Counts one stream's nodes (aliases expanded), depth and aliases from its events."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.nodes = self.aliases = 0
        self.stack: list[_Frame] = []
        self.sizes: dict[str, int] = {}  # anchor -> nodes of the tree it names

    def refuse(self, what: str, event: Any) -> None:
        mark = event.start_mark
        where = f"at line {mark.line + 1} " if mark is not None else ""
        raise ConfigError(f"{self.source} is refused before it is read: {where}its YAML {what}.")

    def add(self, n: int, event: Any) -> None:
        self.nodes += n
        if self.nodes > MAX_NODES:
            self.refuse(f"expands to more than {MAX_NODES:,} nodes, the limit (an alias counts "
                        "as the whole tree it repeats)", event)

    def key(self, event: Any) -> None:
        """A scalar in key position: refused when its mapping already has it."""
        frame = self.stack[-1]
        if event.value == "<<" and event.implicit[0]:
            return  # a merge key may appear beside keys it overrides
        ident = (event.tag, event.value, event.implicit[0])
        if ident in frame.keys:
            mark = event.start_mark
            raise ConfigError(f"{self.source}: key {event.value!r} appears twice in one "
                              f"mapping (line {mark.line + 1}); YAML would silently keep "
                              "the last one.")
        frame.keys.add(ident)

    def completed(self) -> None:
        """A child node ended: in a mapping, keys and values alternate."""
        if self.stack and self.stack[-1].mapping:
            self.stack[-1].key_next = not self.stack[-1].key_next

    def event(self, e: Any) -> None:
        in_key = bool(self.stack) and self.stack[-1].mapping and self.stack[-1].key_next
        if isinstance(e, yaml.DocumentStartEvent):
            self.sizes.clear()  # anchors are per document
        elif isinstance(e, yaml.ScalarEvent):
            self.add(1, e)
            if e.anchor:
                self.sizes[e.anchor] = 1
            if in_key:
                self.key(e)
            self.completed()
        elif isinstance(e, yaml.AliasEvent):
            if any(f.anchor == e.anchor for f in self.stack):
                self.refuse(f"alias *{e.anchor} refers to a collection that contains it", e)
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                self.refuse(f"has more than {MAX_ALIASES:,} aliases, the limit", e)
            self.add(self.sizes.get(e.anchor, 1), e)
            self.completed()
        elif isinstance(e, yaml.CollectionStartEvent):
            self.add(1, e)
            if len(self.stack) >= MAX_DEPTH:
                self.refuse(f"nests collections more than {MAX_DEPTH} deep, the limit", e)
            self.stack.append(_Frame(e.anchor, self.nodes,
                                     isinstance(e, yaml.MappingStartEvent)))
        elif isinstance(e, yaml.CollectionEndEvent):
            frame = self.stack.pop()
            if frame.anchor:
                self.sizes[frame.anchor] = self.nodes - frame.start + 1
            self.completed()


def _checked(text: str, source: str) -> None:
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{source} is refused before it is read: {len(text):,} characters of "
                          f"YAML, more than the limit of {MAX_BYTES:,}.")
    budget = _Budget(source)
    for event in yaml.parse(text, Loader=_LOADER):
        budget.event(event)


def read_yaml_text(path: Path, source: str | None = None) -> str:
    """The text of YAML file ``path``; a file over the size limit is refused before it is
    read (its size on disk is checked first)."""
    source = source or str(path)
    size = path.stat().st_size
    if size > 4 * MAX_BYTES:  # UTF-8 takes at most 4 bytes per character
        raise ConfigError(f"{source} is refused before it is read: {size:,} bytes of YAML, "
                          f"more than the limit of {MAX_BYTES:,} characters.")
    try:
        return path.read_text()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source} is not UTF-8 text (byte {exc.start}).") from None


def _yaml_error(exc: yaml.YAMLError, source: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or "parse error"
    return ConfigError(f"{source} is not valid YAML{where}: {problem}.")


def load_yaml(text: str, source: str) -> Any:
    """The one document in ``text`` (``source`` names it in messages), checked against the
    limits above before it is built.

    Raises:
        ConfigError: bad YAML, more than one document, a duplicate key, or over a limit.
    """
    try:
        _checked(text, source)
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 -- a safe loader
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None


def load_yaml_all(text: str, source: str) -> list[Any]:
    """Every document in ``text`` (empty ones dropped), under the same limits, which count
    the whole stream."""
    try:
        _checked(text, source)
        return [d for d in yaml.load_all(text, Loader=_LOADER) if d is not None]  # noqa: S506
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None
