"""Entry point for ``python -m mailsvc``."""

from mailsvc.cli import main

main()
