"""Chat prompts rendered in a child process, bounded in time and memory.

A chat template is text from a model directory (``tokenizer_config.json``,
``chat_template.jinja``): data (docs/security.md). Jinja's sandbox, which transformers renders
templates in, stops attribute access, not work: two nested ``range(100000)`` loops ran for
ever inside a search and ignored SIGTERM, and a string doubled in a loop takes any amount of
memory. So the prompts are rendered by transformers' own renderer (the one
``apply_chat_template`` calls, with the same arguments) in a child Python with an address
space limit, under a wall-clock limit; a template that fails, overruns or exhausts its memory
is one sentence.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from evomerge.errors import ModelError

__all__ = ["MEMORY_LIMIT", "render_chat_prompts", "time_limit"]

MEMORY_LIMIT = 2 << 30  # bytes of address space for the child (it imports no torch)

# The child: isolated mode (-I: nothing from the working directory is imported), its memory
# limited before transformers is imported. Reads {template, conversations, special} as JSON.
_CHILD = """
import json, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from transformers.utils.chat_template_utils import render_jinja_template
data = json.load(sys.stdin)
try:
    out, _ = render_jinja_template(conversations=data["conversations"],
                                   chat_template=data["template"],
                                   add_generation_prompt=True, **data["special"])
except MemoryError:
    sys.exit("it needed more than %d MiB" % (limit >> 20))
except Exception as exc:
    sys.exit(" ".join(f"{type(exc).__name__}: {exc}".split())[:300])
json.dump(out, sys.stdout)
"""


def time_limit(prompts: int) -> float:
    """Seconds allowed for ``prompts`` prompts: real templates render thousands in a second,
    so the limit is far above what one needs and far below for ever."""
    return 30.0 + 0.01 * prompts


def render_chat_prompts(tokenizer: Any, conversations: Sequence[list[dict[str, str]]]
                        ) -> list[str]:
    """``tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)`` for
    each conversation, rendered by a bounded child process.

    Raises:
        ModelError: the tokenizer has no chat template, or it fails, overruns
            :func:`time_limit` or needs more than :data:`MEMORY_LIMIT`.
    """
    try:
        template = tokenizer.get_chat_template()
    except ValueError as exc:
        raise ModelError(f"The tokenizer has no chat template ({exc}).") from None
    special = {k: v for k, v in tokenizer.special_tokens_map.items()}
    payload = json.dumps({"template": template, "conversations": list(conversations),
                          "special": special})
    limit = time_limit(len(conversations))
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", _CHILD, str(MEMORY_LIMIT)],
                              input=payload, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise ModelError(f"The tokenizer's chat template did not render {len(conversations)} "
                         f"prompts within {limit:.0f} s; a model's template is data, and this "
                         "one does too much work.") from None
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise ModelError(f"The tokenizer's chat template could not be rendered ({why}).")
    out = json.loads(proc.stdout)
    if not (isinstance(out, list) and len(out) == len(conversations)
            and all(isinstance(p, str) for p in out)):
        raise ModelError("The tokenizer's chat template rendered something other than one "
                         "prompt per conversation.")
    return out
