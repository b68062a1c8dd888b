"""Tool specs, safe schema compilation, tool-call parsing, verifiers and dataset formats.

This package imports nothing else of rrr: the agent, learner and API all build on it.
"""
