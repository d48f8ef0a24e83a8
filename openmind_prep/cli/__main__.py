"""``python -m openmind_prep.cli`` = the ``openmind-prep`` command."""

from openmind_prep.cli import main

main()
