"""Verifiers: binary success/fail checks of a model's tool calls, with a reason that drives reflection.

This is the import point for every caller (agent loop, API, learner reward, eval). The
implementations live one per module in ``tools.verifiers``:

* ``verify_schema`` — calls name offered tools, arguments fit their schemas, tool_choice holds;
* ``verify_reference`` — BFCL AST-checker comparison with expected calls (``expected_from_calls``);
* ``verify_bfcl`` / ``verify_exact`` — the other scorers of ``rrr eval`` (``tools.scorers``):
  BFCL's own verdict, quirks included, and the paper's exact match; ``SCORERS`` names all three;
* ``verify_execution`` — run registered Python functions in a subprocess with a timeout;
* ``verify_relevance`` — BFCL live_relevance: some well-formed call, whichever;
* ``verify_countdown`` — TinyZero's Countdown rules on the last ``<answer>``;
* ``VerifierSpec`` (parsed once at the edge) / ``normalize_spec`` / ``run_verifier`` /
  ``is_rerunnable`` — the serialisable specs; ``effective_tool_choice`` — the tool_choice default.

* ``VerificationBudget`` — one request's time for all of its verification (and its regex searches).

None of them raises on model output: a failed call is a Verdict. Bad specs raise ValueError.
"""

from tools.scorers import SCORERS, verify_bfcl, verify_exact
from tools.verifiers.base import FAILURE_CODES, ModelOutput, Verdict, VerificationBudget
from tools.verifiers.countdown import verify_countdown
from tools.verifiers.execution import DEFAULT_EXECUTION_MODULES, verify_execution
from tools.verifiers.reference import (
    Expected,
    expected_from_calls,
    normalize_expected,
    normalize_string,
    verify_reference,
)
from tools.verifiers.relevance import verify_relevance
from tools.verifiers.schema_check import effective_tool_choice, parse_tool_choice, verify_schema
from tools.verifiers.specs import (
    DEFAULT_CONTEXT,
    SCHEMA,
    VERIFIER_TYPES,
    VerifierContext,
    VerifierSpec,
    is_rerunnable,
    normalize_spec,
    run_verifier,
)

__all__ = [
    "DEFAULT_CONTEXT",
    "DEFAULT_EXECUTION_MODULES",
    "FAILURE_CODES",
    "SCHEMA",
    "SCORERS",
    "VERIFIER_TYPES",
    "Expected",
    "ModelOutput",
    "Verdict",
    "VerificationBudget",
    "VerifierContext",
    "VerifierSpec",
    "effective_tool_choice",
    "expected_from_calls",
    "is_rerunnable",
    "normalize_expected",
    "normalize_spec",
    "normalize_string",
    "parse_tool_choice",
    "run_verifier",
    "verify_bfcl",
    "verify_countdown",
    "verify_exact",
    "verify_execution",
    "verify_reference",
    "verify_relevance",
    "verify_schema",
]
