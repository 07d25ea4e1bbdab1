"""The triage page at /ui/: what came in, and fixing what the rules could not decide.

Server-rendered (Jinja2), a few lines of plain JavaScript for search-as-you-type, assets served
from the package. Every change goes through the same service layer as the REST API
(``mailsvc.crmstore.services``); this module only reads, renders and calls it.
"""

from __future__ import annotations

from mailsvc.api.ui.routes import router

__all__ = ["router"]
