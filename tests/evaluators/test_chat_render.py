"""Chat templates are data: the prompts are rendered by a bounded child process, and equal what
``apply_chat_template`` renders (the oracle) for real templates."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import yaml
from fuzz_inputs import run_cli
from search.spaces import space_dict

from evomerge.errors import ModelError
from evomerge.evaluators import chat_render
from evomerge.evaluators.chat_render import render_chat_prompts

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Cat?"}],
    [{"role": "user", "content": "quotes \" and {{ braces }} and <|im_end|>"}],
]

# a template using the tokenizer's special tokens, a loop, a filter and raise_exception
TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] not in ['user', 'system'] %}"
            "{{ raise_exception('bad role') }}{% endif %}[{{ m['role'] | upper }}] "
            "{{ m['content'] | trim }}{{ eos_token }}\n{% endfor %}"
            "{% if add_generation_prompt %}[ASSISTANT]{% endif %}")


@pytest.fixture(scope="module")
def tok(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2["base"])


@pytest.mark.parametrize("template", [None, TEMPLATE], ids=["smollm2", "special-tokens"])
def test_prompts_equal_apply_chat_template(tok, template):
    if template is not None:
        tok = tok.__class__.from_pretrained(tok.name_or_path)
        tok.chat_template = template
    ours = render_chat_prompts(tok, CONVERSATIONS)
    theirs = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
              for c in CONVERSATIONS]
    assert ours == theirs
    assert len(set(ours)) == 3 and all(p.endswith(("assistant\n", "[ASSISTANT]")) for p in ours)


@pytest.mark.parametrize("template, words", [
    ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}x",
     "did not render 3 prompts within 2 s"),
    ("{% set s = namespace(t='x' * 1000000) %}{% for i in range(40) %}"
     "{% set s.t = s.t ~ s.t %}{% endfor %}{{ s.t | length }}", "more than 2048 MiB"),
    ("{{ raise_exception('no system role') }}", "TemplateError: no system role"),
    ("{{ messages[0].__class__.__mro__ }}", "could not be rendered (SecurityError"),
    # 20 MB of prompt: its tokenization took the parent process to 7.8 GB
    ("{{ '1+2 ' * 5000000 }}", "it rendered a prompt of 20000000 characters, more than 1048576"),
], ids=["endless-loops", "doubling-string", "raises", "sandbox", "huge-prompt"])
def test_a_hostile_template_is_one_sentence(tok, monkeypatch, template, words):
    # only the endless loops need the short limit; the others must trip their own bound first
    # (the doubling took 1.65 s here and over 2 s on a fresh CI machine)
    limit = 2.0 if "within 2 s" in words else 25.0
    monkeypatch.setattr(chat_render, "time_limit", lambda n: limit)
    tok = tok.__class__.from_pretrained(tok.name_or_path)
    tok.chat_template = template
    start = time.monotonic()
    with pytest.raises(ModelError, match="chat template") as err:
        render_chat_prompts(tok, CONVERSATIONS)
    assert words in str(err.value) and "\n" not in str(err.value), err.value
    assert time.monotonic() - start < 30


def test_a_models_endless_template_fails_the_trials_not_the_search(mini_zoo, tmp_path,
                                                                    monkeypatch):
    """The probe's case: a base model whose tokenizer_config.json carries two nested
    100000-step loops ran a search for ever (SIGTERM ignored); now each candidate fails with
    the reason, once per worker, and the search ends on its budget."""
    monkeypatch.setattr(chat_render, "time_limit", lambda n: 2.0)
    base = tmp_path / "base"
    shutil.copytree(mini_zoo / "base", base)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for a in range(100000) %}{% for b in range(100000) %}"
                               "{% endfor %}{% endfor %}{{ messages[0]['content'] }}")
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    task = tmp_path / "t.jsonl"
    task.write_text("".join(json.dumps({"prompt": f"{a}+{a}=", "answer": str(2 * a)}) + "\n"
                            for a in range(3)))
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump(space_dict(
        mini_zoo, base_model=str(base), budget={"trials": 3},
        evaluators={"ans": {"type": "answers", "files": {"t": str(task)},
                            "chat_template": True}},
        objectives=[{"evaluator": "ans", "task": "t", "metric": "answer_nll",
                     "direction": "minimize"}])))
    start = time.monotonic()
    code, err = run_cli(["search", str(space), "--results", str(tmp_path / "r")])
    assert time.monotonic() - start < 120
    from evomerge.search.ledger import load_study, open_storage

    study = load_study(open_storage(f"sqlite:///{tmp_path / 'r' / 't' / 'study.db'}"), "t")
    reasons = [t.user_attrs.get("fail_reason", "") for t in study.get_trials()]
    assert len(reasons) >= 3 and all("did not render 3 prompts within 2 s" in r
                                     for r in reasons), reasons


class _Lm:
    """What ``HFLM.apply_chat_template`` reads of its model: the tokenizer and the
    template arguments."""

    def __init__(self, tokenizer, **args):
        self.tokenizer, self.chat_template_args = tokenizer, args


@pytest.mark.parametrize("template", [None, TEMPLATE], ids=["smollm2", "no-assistant-role"])
def test_lm_eval_chats_equal_hflm(tok, template):
    """lm-eval's own ``apply_chat_template`` is the oracle, with and without the generation
    prompt (the latter continues the final message), and its retry without the system turn
    when the template raises on it (``TEMPLATE`` refuses an assistant turn: raise_exception)."""
    from lm_eval.models.huggingface import HFLM

    from evomerge.evaluators.chat_render import bounded_lm_eval_chat

    if template is not None:
        tok = tok.__class__.from_pretrained(tok.name_or_path)
        tok.chat_template = template.replace("['user', 'system']", "['user', 'assistant']")
    lm = _Lm(tok)
    ours = bounded_lm_eval_chat(lm)
    for chat in CONVERSATIONS + [CONVERSATIONS[1] + [{"role": "assistant", "content": "Chat"}]]:
        for gen in (True, False):
            assert ours(chat, gen) == HFLM.apply_chat_template(lm, chat, gen), (chat, gen)


def test_lm_eval_renders_the_models_template_bounded(mini_zoo, monkeypatch):
    """The harness with ``apply_chat_template`` scores what lm-eval's own rendering scores,
    and a template that never ends is one sentence within the time limit."""
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.evaluators import make_evaluator
    from evomerge.zoo.build import write_lm_eval_yamls

    model = AutoModelForCausalLM.from_pretrained(mini_zoo / "math").eval()
    tokenizer = AutoTokenizer.from_pretrained(mini_zoo / "math")
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}" \
        "{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    include = str(write_lm_eval_yamls(mini_zoo))

    def harness():
        return make_evaluator("lm_eval", tasks=["zoo_add_l1_test"], include_path=include,
                              limit=8, apply_chat_template=True)

    ev = harness()
    ours = ev(model, tokenizer)
    assert ev._lm.apply_chat_template.__module__ == "evomerge.evaluators.chat_render"
    with monkeypatch.context() as m:  # lm-eval rendering in process, as before
        m.setattr("evomerge.evaluators.harness.bounded_lm_eval_chat",
                  lambda lm: HFLM.apply_chat_template.__get__(lm))
        assert harness()(model, tokenizer) == ours
    monkeypatch.setattr(chat_render, "time_limit", lambda n: 2.0)
    tokenizer.chat_template = "{% for a in range(100000) %}{% for b in range(100000) %}" \
        "{% endfor %}{% endfor %}x"
    start = time.monotonic()
    with pytest.raises(ModelError, match="did not render 1 prompt within 2 s"):
        harness()(model, tokenizer)
    assert time.monotonic() - start < 60


def test_a_renderer_whose_parent_is_killed_mid_render_exits(tmp_path):
    """SIGKILL runs no atexit: the child, rendering an endless template, notices its parent
    is gone and exits (it spun for ever before)."""
    import os
    import signal
    import subprocess
    import sys

    import psutil

    script = tmp_path / "parent.py"
    script.write_text(
        "from evomerge.evaluators.chat_render import render_chat_prompts\n"
        "class Tok:\n"
        "    special_tokens_map = {}\n"
        "    def get_chat_template(self):\n"
        "        return '{% for a in range(100000) %}{% for b in range(100000) %}"
        "{% endfor %}{% endfor %}x'\n"
        "print('rendering', flush=True)\n"
        "render_chat_prompts(Tok(), [[{'role': 'user', 'content': 'hi'}]])\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout.readline() == "rendering\n"
    deadline = time.monotonic() + 60
    while not (children := psutil.Process(parent.pid).children()):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    child = children[0]
    time.sleep(2)  # rendering now, on a machine as fast as ours
    deadline = time.monotonic() + 30  # else still importing: busy either way
    while child.cpu_percent(interval=0.5) <= 10:
        assert time.monotonic() < deadline
    assert child.is_running()
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    child.wait(timeout=20)  # psutil.TimeoutExpired if it were still spinning


def test_a_special_token_cannot_replace_the_request():
    """Special tokens are template variables: one named ``template`` or ``conversations``
    (a tokenizer_config.json's extra_special_tokens) swapped the template before."""

    class Tok:
        special_tokens_map = {"template": "{{ 7*7 }}", "bos_token": "<s>"}

        def get_chat_template(self):
            return "{{ bos_token }}{{ messages[0]['content'] }}|{{ template }}"

    assert render_chat_prompts(Tok(), CONVERSATIONS[:1]) == ["<s>What is 2 + 3?|{{ 7*7 }}"]
    Tok.special_tokens_map = {"conversations": "<c>"}
    with pytest.raises(ModelError, match="could not be rendered"):
        render_chat_prompts(Tok(), CONVERSATIONS[:1])
