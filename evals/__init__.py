"""Evaluation: measure a policy the way the paper did (success at attempt 1 and after reflection).

The one measurement path of rrr: ``rrr eval run``, the learner's gate, ``rrr learn mine`` and the
demo all judge items here.

* ``items``   — a dataset item as a request (verifier, reference answer) and its reference score;
  a stored episode as an item to re-run (the gate);
* ``runners`` — where answers come from: ``rrr serve`` over HTTP, or an engine in this process;
* ``results`` — per-item results and the resumable output folder;
* ``run``     — ``run_evaluation``: items x models through the reflect/retry loop; ``run_items``:
  stored items through the loop on one engine;
* ``stats``   — Wilson intervals, paired (Newcombe) differences, the paper's rates from statuses;
* ``report``  — the summary and the tables; ``chart`` — the PNG.
"""

from evals.items import EvalTask, eval_task, eval_tasks
from evals.report import failure_counts, format_failures, format_markdown, format_table, summarize, write_reports
from evals.results import AttemptResult, EvalOutput, ItemResult, OutputError, score_trace
from evals.run import EvalConfig, EvalRun, run_evaluation
from evals.runners import (
    EngineRunner,
    ItemError,
    Sampling,
    ServerRunner,
    TargetError,
    local_runner,
)
from evals.stats import Rate, wilson_interval

__all__ = [
    "AttemptResult",
    "EngineRunner",
    "EvalConfig",
    "EvalOutput",
    "EvalRun",
    "EvalTask",
    "ItemError",
    "ItemResult",
    "OutputError",
    "Rate",
    "Sampling",
    "ServerRunner",
    "TargetError",
    "eval_task",
    "eval_tasks",
    "failure_counts",
    "format_failures",
    "format_markdown",
    "format_table",
    "local_runner",
    "run_evaluation",
    "score_trace",
    "summarize",
    "wilson_interval",
    "write_reports",
]
