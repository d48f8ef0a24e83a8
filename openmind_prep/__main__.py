"""``python -m openmind_prep`` = the ``openmind-prep`` command."""

from openmind_prep.cli import main

main()
