"""Answer extraction and exact match for generative scoring, as lm-eval's filters and its
``exact_match`` metric compute them.

An :class:`Extract` takes the answer out of a generation: the whole text (stripped), or
lm-eval's ``regex`` filter followed by ``take_first`` (``findall``; ``group_select`` picks the
match, the first non-empty group of a multi-group pattern, stripped; ``fallback`` when
nothing matches). A :class:`Match` compares it with the reference as lm-eval's
``exact_match`` does (``regexes_to_ignore`` removed from both, then case and punctuation
folded), so a GSM8K reference ``"... #### 72"`` and the extracted ``"72"`` match. Presets
copy lm-eval's tasks::

    gsm8k            "#### N" (gsm8k's strict-match)
    gsm8k_flexible   the last number in the text (gsm8k's flexible-extract)
    answer_is        "The answer is N." (gsm8k-cot's strict-match)
    exact            the whole generation, stripped, equal to the stripped answer
"""

from __future__ import annotations

import re
import string
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from evomerge.errors import ConfigError

__all__ = ["Extract", "Match", "PRESETS", "extraction"]

_GSM8K_IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")
_NUMBER = "(\\-?[0-9\\.\\,]+)"


class Extract(BaseModel):
    """Which part of a generation is the answer.

    Attributes:
        regex: a pattern whose matches are the candidates (None: the stripped generation).
        group_select: which match (``findall`` order; -1 the last).
        fallback: the answer when nothing matches (lm-eval's ``[invalid]``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    regex: str | None = None
    group_select: int = 0
    fallback: str = "[invalid]"

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"regex {v!r} does not compile ({exc})") from None
        return v

    def __call__(self, text: str) -> str | None:
        """The answer in ``text``, or None when the pattern finds nothing."""
        if self.regex is None:
            return text.strip()
        found = re.findall(self.regex, text)
        if not found:
            return None
        try:
            pick = found[self.group_select]
        except IndexError:
            return None
        if isinstance(pick, tuple):  # several groups: the first that matched
            pick = next((g for g in pick if g), None)
            if pick is None:
                return None
        return pick.strip()


class Match(BaseModel):
    """lm-eval's ``exact_match`` options."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ignore_case: bool = False
    ignore_punctuation: bool = False
    regexes_to_ignore: tuple[str, ...] = ()

    def normalize(self, text: str) -> str:
        for pattern in self.regexes_to_ignore:
            text = re.sub(pattern, "", text)
        if self.ignore_case:
            text = text.lower()
        if self.ignore_punctuation:
            text = text.translate(str.maketrans("", "", string.punctuation))
        return text

    def __call__(self, prediction: str, reference: str) -> bool:
        return self.normalize(prediction) == self.normalize(reference)


_GSM8K = Match(ignore_case=True, regexes_to_ignore=_GSM8K_IGNORE)
PRESETS: dict[str, tuple[Extract, Match]] = {
    "exact": (Extract(), Match()),
    "gsm8k": (Extract(regex=f"#### {_NUMBER}"), _GSM8K),
    "gsm8k_flexible": (Extract(regex="(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1), _GSM8K),
    "answer_is": (Extract(regex=f"The answer is {_NUMBER}."), _GSM8K),
}


def extraction(extract: str | dict[str, Any] | None = None,
               match: dict[str, Any] | None = None) -> tuple[Extract, Match]:
    """The (extract, match) pair of a preset name, or of ``{preset?, regex?, group_select?,
    fallback?}``, with ``match`` options overriding the preset's.

    Raises:
        ConfigError: an unknown preset or option, or a regex that does not compile.
    """
    spec = {"preset": extract} if isinstance(extract, str) or extract is None else dict(extract)
    name = spec.pop("preset", None) or "exact"
    if name not in PRESETS:
        raise ConfigError(f"extract preset {name!r} is unknown; available: "
                          f"{', '.join(PRESETS)}.")
    ex, mt = PRESETS[name]
    try:
        if spec:
            ex = Extract(**{**ex.model_dump(), **spec})
        if match:
            mt = Match(**{**mt.model_dump(), **match})
    except Exception as exc:  # noqa: BLE001 -- pydantic's message, in one sentence
        first = exc.errors()[0] if hasattr(exc, "errors") else {"loc": (), "msg": str(exc)}
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"extract/match option {where!r}: {first['msg']}.") from None
    return ex, mt
