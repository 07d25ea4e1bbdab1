"""Entry point for ``python -m mailsvc``."""

from mailsvc.entry import main

main()
