"""`python -m transferkit` runs the command line, as the `transferkit` script does."""

from transferkit.cli import main

main()
