"""rrr agent package (see DESIGN.md)."""
