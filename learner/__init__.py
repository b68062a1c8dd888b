"""rrr learner package (see docs/design.md)."""
