"""`python -m cli` runs the `rrr` command line."""

from cli import main

main()
