"""A cheap schema-version check: no Alembic import on the hot start of `mailsvc ingest`.

The head revision is read from the migration scripts' own ``revision`` / ``down_revision`` lines
(the one revision no other names as its parent), and the database's from ``alembic_version``.
Only when the two differ does the caller load Alembic (to upgrade, or to say what is wrong).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

VERSIONS = Path(__file__).with_name("migrations") / "versions"

_REVISION = re.compile(r'^revision(?:\s*:\s*[\w\[\] |]+)?\s*=\s*["\']([^"\']+)["\']', re.M)
_DOWN = re.compile(r"^down_revision(?:\s*:\s*[\w\[\] |,]+)?\s*=\s*(.+)$", re.M)
_QUOTED = re.compile(r'["\']([^"\']+)["\']')


@cache
def script_head() -> str | None:
    """The single head of the migration scripts, or None when it cannot be told cheaply (no
    scripts, several heads, an unusual file): the caller then asks Alembic."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in VERSIONS.glob("*.py"):
        source = path.read_text(encoding="utf-8")
        revision = _REVISION.search(source)
        down = _DOWN.search(source)
        if revision is None or down is None:
            return None
        revisions.add(revision.group(1))
        parents.update(_QUOTED.findall(down.group(1)))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


async def database_revision(engine: AsyncEngine) -> str | None:
    """The revision in ``alembic_version`` (None: no such table, or empty)."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    async with engine.connect() as conn:
        try:
            found = await conn.scalar(text("SELECT version_num FROM alembic_version"))
        except DBAPIError:
            return None
    return str(found) if found else None
