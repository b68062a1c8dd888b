"""rrr learner package (see DESIGN.md)."""
