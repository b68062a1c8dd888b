"""A small catalog of demo tools: plain Python functions the execution verifier may run.

Modules under ``tools.catalog`` are the default registered tool modules (see
``tools.verifiers.execution.DEFAULT_EXECUTION_MODULES``).
"""
