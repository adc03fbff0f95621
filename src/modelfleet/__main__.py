"""``python -m modelfleet`` runs the command line."""

from modelfleet.cli import main

main()
