"""``python -m control`` is the ``spectra`` CLI."""

from control.cli import main

main()
