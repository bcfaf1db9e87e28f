"""`python -m profileguard` runs the command line."""

from profileguard.cli import main

main()
