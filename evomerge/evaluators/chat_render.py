"""Chat prompts rendered in a child process, bounded in time and memory.

A chat template is text from a model directory (``tokenizer_config.json``,
``chat_template.jinja``): data (docs/security.md). Jinja's sandbox, which transformers renders
templates in, stops attribute access, not work: two nested ``range(100000)`` loops ran for
ever inside a search and ignored SIGTERM, and a string doubled in a loop takes any amount of
memory. So prompts are rendered by transformers' own renderer (the one
``apply_chat_template`` calls, with the same arguments) in a child Python kept for the
process's life, with an address-space limit; each call has a wall-clock limit, after which the
child is killed. A template that fails, overruns or exhausts its memory is one sentence.

Both scorers use it: the ``answers`` evaluator renders each task's prompts at once
(:func:`render_chat_prompts`), lm-eval one request at a time (:func:`bounded_lm_eval_chat`
replaces ``HFLM.apply_chat_template``).
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from evomerge.errors import ModelError

__all__ = ["MEMORY_LIMIT", "TemplateFailure", "bounded_lm_eval_chat", "render_chat_prompts",
           "time_limit"]

MEMORY_LIMIT = 2 << 30  # bytes of address space for the child (it imports no torch)
START_LIMIT = 300.0  # seconds for the child to import transformers (measured: 0.5 s)
MAX_PROMPT = 1 << 20  # characters of one rendered prompt (a 128k-token context is ~500k)

# The child: nothing imported from the working directory (-c puts it first on sys.path; the
# environment, PYTHONPATH and user site included, is trusted as the parent's is), its memory
# limited before transformers is imported; one JSON request per line in, one answer per line
# out. After a MemoryError it answers and exits (its heap may be in any state).
_CHILD = """
import sys
if sys.path and sys.path[0] in ("", "."):  # never import from the working directory
    del sys.path[0]
import json, os, resource, threading, time
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
resource.setrlimit(resource.RLIMIT_CPU, (3600, 3600))  # seconds of CPU in its whole life
parent = int(sys.argv[2])  # not getppid(): a parent killed at once would leave it as 1

def orphaned():  # a parent killed mid-render (SIGKILL: no atexit) must not leave it spinning
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)

threading.Thread(target=orphaned, daemon=True).start()
from transformers.utils.chat_template_utils import render_jinja_template
sys.stdout.write("ready\\n")
sys.stdout.flush()
for line in sys.stdin:
    data = json.loads(line)
    try:
        out, _ = render_jinja_template(conversations=data["conversations"],
                                       chat_template=data["template"],
                                       **{**data["special"], **data["options"]})
        big = max((len(p) for p in out), default=0)
        answer = ({"ok": out} if big <= data["max_chars"] else
                  {"error": "it rendered a prompt of %d characters, more than %d"
                   % (big, data["max_chars"])})
    except MemoryError:
        answer = {"error": "it needed more than %d MiB" % (limit >> 20), "fatal": True}
    except Exception as exc:
        answer = {"error": " ".join(f"{type(exc).__name__}: {exc}".split())[:300],
                  "template": "jinja2" in type(exc).__module__}
    sys.stdout.write(json.dumps(answer) + "\\n")
    sys.stdout.flush()
    if answer.get("fatal"):
        break
"""


class TemplateFailure(ModelError):
    """The template itself raised (jinja2's errors, ``raise_exception``): lm-eval retries
    such a chat without its system turn."""


def time_limit(prompts: int) -> float:
    """Seconds allowed for a call rendering ``prompts`` prompts: real templates render
    thousands in a second, so the limit is far above what one needs and far below for ever."""
    return 30.0 + 0.01 * prompts


class _Child:
    """The renderer process, started on first use and again after it was killed."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()  # one request at a time on the pipe

    def ask(self, request: dict[str, Any], limit: float) -> dict[str, Any]:
        with self.lock:
            return self._ask(request, limit)

    def _ask(self, request: dict[str, Any], limit: float) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(MEMORY_LIMIT), str(os.getpid())], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            # the render's clock starts once the child has imported transformers (slow on a
            # cold filesystem, or beside actors loading weights)
            ready = self._line(START_LIMIT)
            if ready is None:
                return {"error": f"the renderer did not start within {START_LIMIT:.0f} s"}
            if ready != "ready\n":
                return self._died()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return self._died()
        line = self._line(limit, request["max_chars"] * len(request["conversations"]))
        if line is None:
            return {"timeout": True}
        if line and not line.endswith("\n"):  # longer than any answer within the limits
            self.close()
            return {"error": "its answer was longer than the prompts' limit"}
        answer = json.loads(line) if line else self._died()
        if answer.get("fatal"):
            self.close()  # the child exits after a MemoryError: the next call starts a new one
        return answer

    def _line(self, limit: float, chars: int = 1 << 10) -> str | None:
        """The child's next line ('' when it exited; cut after about ``chars`` characters),
        or None (the child killed) when none comes within ``limit`` seconds."""
        assert self.proc is not None and self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout=limit):
                self.close()
                return None
        # JSON escapes may take 6 characters for one; a margin for the brackets and quotes
        return self.proc.stdout.readline(6 * chars + (1 << 16))

    def _died(self) -> dict[str, Any]:
        assert self.proc is not None
        err = self.proc.stderr.read() if self.proc.stderr else ""
        self.close()
        return {"error": (err.strip().splitlines() or ["the renderer stopped"])[-1][:300]}

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


_CHILD_PROCESS = _Child()
atexit.register(_CHILD_PROCESS.close)


def _render(tokenizer: Any, conversations: Sequence[list[dict[str, str]]],
            **options: Any) -> list[str]:
    try:
        template = tokenizer.get_chat_template()
    except ValueError as exc:
        raise ModelError(f"The tokenizer has no chat template ({exc}).") from None
    limit = time_limit(len(conversations))
    start = time.monotonic()
    # special tokens apart from the request's own fields: a token named "template" must not
    # replace the template (transformers passes them as keywords, as the child does)
    answer = _CHILD_PROCESS.ask({"template": template, "conversations": list(conversations),
                                 "special": dict(tokenizer.special_tokens_map),
                                 "options": options, "max_chars": MAX_PROMPT}, limit)
    if answer.get("timeout"):
        raise ModelError(f"The tokenizer's chat template did not render {len(conversations)} "
                         f"prompt{'s' * (len(conversations) != 1)} within {limit:.0f} s "
                         f"({time.monotonic() - start:.0f} s); a model's template is data, "
                         "and this one does too much work.")
    if "error" in answer:
        kind = TemplateFailure if answer.get("template") else ModelError
        raise kind(f"The tokenizer's chat template could not be rendered ({answer['error']}).")
    out = answer["ok"]
    if not (isinstance(out, list) and len(out) == len(conversations)
            and all(isinstance(p, str) for p in out)):
        raise ModelError("The tokenizer's chat template rendered something other than one "
                         "prompt per conversation.")
    return out


def render_chat_prompts(tokenizer: Any, conversations: Sequence[list[dict[str, str]]]
                        ) -> list[str]:
    """``tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)`` for
    each conversation, rendered by the bounded child process.

    Raises:
        ModelError: the tokenizer has no chat template, or it fails, overruns
            :func:`time_limit` or needs more than :data:`MEMORY_LIMIT`.
    """
    return _render(tokenizer, conversations, add_generation_prompt=True)


def bounded_lm_eval_chat(lm: Any) -> Callable[..., str]:
    """What ``lm_eval``'s ``HFLM.apply_chat_template`` does (the same arguments; a template
    error retried without the system turn), rendered by the bounded child process."""

    def apply_chat_template(chat_history: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        options = {"add_generation_prompt": add_generation_prompt,
                   "continue_final_message": not add_generation_prompt,
                   **getattr(lm, "chat_template_args", {})}
        try:
            return _render(lm.tokenizer, [chat_history], **options)[0]
        except TemplateFailure:
            chat_history = [m for m in chat_history if m["role"] != "system"]
            return _render(lm.tokenizer, [chat_history], **options)[0]

    return apply_chat_template
