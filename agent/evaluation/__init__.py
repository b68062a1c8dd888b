"""Evaluation: measure a model or adapter the way the paper did (accuracy at attempt 1 and 2).

``rrr eval run`` is a thin shell over this package; the demo and other code reuse its pieces:

* ``tasks``   — a dataset item as a request (verifier, reference answer) and its reference score;
* ``runners`` — where answers come from: ``rrr serve`` over HTTP, or an engine in this process;
* ``results`` — per-item results and the resumable output folder;
* ``harness`` — ``run_evaluation``: items x models through the reflect/retry loop;
* ``report``  — Wilson intervals, the summary, the tables; ``chart`` — the PNG.
"""

from agent.evaluation.harness import EvalConfig, EvalRun, run_evaluation
from agent.evaluation.report import (
    Accuracy,
    format_markdown,
    format_table,
    summarize,
    wilson_interval,
    write_reports,
)
from agent.evaluation.results import AttemptResult, EvalOutput, ItemResult, OutputError, score_trace
from agent.evaluation.runners import (
    EngineRunner,
    ItemError,
    Sampling,
    ServerRunner,
    TargetError,
    local_runner,
)
from agent.evaluation.tasks import EvalTask, eval_task, eval_tasks

__all__ = [
    "Accuracy",
    "AttemptResult",
    "EngineRunner",
    "EvalConfig",
    "EvalOutput",
    "EvalRun",
    "EvalTask",
    "ItemError",
    "ItemResult",
    "OutputError",
    "Sampling",
    "ServerRunner",
    "TargetError",
    "eval_task",
    "eval_tasks",
    "format_markdown",
    "format_table",
    "local_runner",
    "run_evaluation",
    "score_trace",
    "summarize",
    "wilson_interval",
    "write_reports",
]
