"""``python -m robustedit.cli``."""

from robustedit.cli import main

main()
