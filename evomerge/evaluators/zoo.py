"""The zoo's scorer: the ``answers`` evaluator on the zoo's task files.

Every answer ends with a newline (the zoo's terminator), scored as part of it; the EOS token
where that newline is expected counts as right, as generation stops at either. Per task:

* ``answer_nll``  mean negative log-likelihood per answer token (lower is better; smooth,
  the signal a search needs);
* ``token_acc``   fraction of answer tokens that are the argmax;
* ``exact_match`` fraction of examples whose every answer token (the terminator included) is
  the argmax: the answers evaluator's ``greedy_match``. With the prefix teacher-forced this
  equals greedy decoding's exact match (what lm-eval's ``generate_until`` with
  ``until: ["\\n"]`` measures), because greedy decoding follows the same path for as long as
  it is right.
"""

from __future__ import annotations

from pathlib import Path

from evomerge.errors import ConfigError
from evomerge.evaluators.answers import AnswerEvaluator
from evomerge.evaluators.base import Metric, register_evaluator
from evomerge.zoo.data import read_jsonl

__all__ = ["ZooEvaluator"]

_ORDER = ("exact_match", "token_acc", "answer_nll")


@register_evaluator("zoo")
class ZooEvaluator(AnswerEvaluator):
    """Teacher-forced scorer for the zoo's prompt/answer tasks.

    Args:
        tasks: task names; with ``zoo`` they are read from ``zoo/tasks/<task>/<split>.jsonl``.
        zoo: a built zoo directory.
        files: explicit task -> JSONL path mapping (instead of ``zoo``).
        split: "validation" (search) or "test" (reports).
        limit: first N examples per task.
        batch_size: examples per forward pass.
    """

    renamed = {"greedy_match": "exact_match"}

    def __init__(self, tasks: list[str], zoo: str | None = None,
                 files: dict[str, str] | None = None, split: str = "validation",
                 limit: int | None = None, batch_size: int = 256) -> None:
        if not tasks:
            raise ConfigError("The zoo evaluator needs at least one task.")
        if files is None:
            if zoo is None:
                raise ConfigError("The zoo evaluator needs 'zoo' (a zoo directory) or 'files'.")
            files = {t: str(Path(zoo) / "tasks" / t / f"{split}.jsonl") for t in tasks}
        for t in tasks:
            read_jsonl(files[t])  # the zoo's vocabulary: a foreign character fails here
        self.tasks = list(tasks)
        super().__init__({t: files[t] for t in tasks}, limit=limit, batch_size=batch_size,
                         terminator="\n", eos_ends_answer=True)

    @property
    def metrics(self) -> tuple[Metric, ...]:
        by_name = {m.name: m for m in super().metrics}
        return tuple(by_name[f"{t}/{m}"] for t in self.tasks for m in _ORDER)
