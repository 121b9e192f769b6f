"""`python -m edgeslim.cli ...`, the same as the `edgeslim` console script."""

from edgeslim.cli import main

main()
