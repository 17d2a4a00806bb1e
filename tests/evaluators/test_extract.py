"""Answer extraction and exact match equal lm-eval's own ``regex`` / ``take_first`` filters
and its ``exact_match`` metric, preset by preset, on texts where they match and where not."""

from __future__ import annotations

import pytest

from evomerge.errors import ConfigError
from evomerge.evaluators.extract import PRESETS, extraction

TEXTS = [
    "Natalia sold 48 clips in April.\n#### 72",
    "She has 3 + 4 = 7 apples. #### 7.",
    "#### -1,234",
    "The answer is 18.",
    "The answer is $1,000. So the answer is 12.",
    "no number here",
    "costs $5.50 and then 6",
    "",
    "72",
    "THE ANSWER IS 9.",
]
REFERENCES = ["Natalia sold ... #### 72", "#### 7", "-1234", "18", "12", "[invalid]", "6", "",
              "72", "9"]


def lm_eval_pipeline(preset: str):
    """lm-eval's filters and metric with the settings of the task the preset copies."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter
    from lm_eval.filters.selection import TakeFirstFilter

    ex, mt = PRESETS[preset]
    kwargs = {"ignore_case": mt.ignore_case, "ignore_punctuation": mt.ignore_punctuation,
              "regexes_to_ignore": list(mt.regexes_to_ignore) or None}

    def run(text: str, ref: str) -> tuple[str, bool]:
        resps = [[text]]
        if ex.regex is not None:
            resps = RegexFilter(ex.regex, ex.group_select, ex.fallback).apply(resps, [{}])
        pred = list(TakeFirstFilter().apply(resps, [{}]))[0]
        if ex.regex is None:  # the exact preset strips both sides
            pred, ref = pred.strip(), ref.strip()
        return pred, bool(exact_match_hf_evaluate([pred], [ref], **kwargs)["exact_match"])
    return run


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_equal_lm_eval(preset):
    ex, mt = extraction(preset)
    theirs = lm_eval_pipeline(preset)
    matched = []
    for text, ref in zip(TEXTS, REFERENCES):
        found = ex(text)
        pred = found if found is not None else ex.fallback
        want_pred, want_match = theirs(text, ref)
        assert pred == want_pred, (preset, text)
        assert mt(pred, ref if ex.regex is not None else ref.strip()) == want_match, (preset, text)
        matched.append(want_match)
    assert True in matched and False in matched  # both outcomes occur for every preset


def test_custom_extraction_and_match_options():
    ex, mt = extraction({"regex": r"ANSWER: (\w+)", "group_select": -1},
                        match={"ignore_case": True})
    assert ex("ANSWER: no ... ANSWER: Yes") == "Yes" and mt("Yes", "yes")
    assert ex("nothing") is None
    ex, mt = extraction({"preset": "gsm8k", "fallback": "none"})
    assert ex.regex == PRESETS["gsm8k"][0].regex and ex.fallback == "none"
    assert mt("72", "... #### 72")  # the preset's match options stay


@pytest.mark.parametrize("extract,match,msg", [
    ("gsm9k", None, "extract preset 'gsm9k' is unknown; available: exact, gsm8k"),
    ({"regex": "(unclosed"}, None, "extract/match option 'regex'"),
    ({"pattern": "x"}, None, "extract/match option 'pattern'"),
    (None, {"ignore_cases": True}, "extract/match option 'ignore_cases'"),
])
def test_bad_options_are_one_sentence(extract, match, msg):
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(")):
        extraction(extract, match)
