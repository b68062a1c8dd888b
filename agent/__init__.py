"""rrr agent package (see docs/design.md)."""
