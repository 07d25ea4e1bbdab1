"""Bulk import of existing mail: .eml files, directories, mbox files and Maildir folders.

Sources are found first (so the total is known for a progress bar), then read one message at a
time, accepted into the intake in batches (one transaction per batch) and decided right away by
this process's decide loop (parsing in ``--jobs`` processes). Re-running is safe: what is already
accepted or stored comes back as ``duplicate``.
"""

from __future__ import annotations

import logging
import mailbox
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mailsvc.ingest.accept import Accepted
from mailsvc.ingest.decider import Decider
from mailsvc.ingest.pipeline import Pipeline
from mailsvc.mail import Envelope, RawMail

logger = logging.getLogger(__name__)

MBOX_MAGIC = b"From "
MAILDIR_PARTS = ("cur", "new", "tmp")


@dataclass(frozen=True, slots=True)
class MessageRef:
    """Where one message is, and how to read its bytes when its turn comes."""

    origin: str
    load: Callable[[], bytes]


@dataclass(slots=True)
class Found:
    """What ``discover`` found: messages in order, files that are not mail, open mailboxes."""

    messages: list[MessageRef] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    mailboxes: list[mailbox.Mailbox] = field(default_factory=list)

    def close(self) -> None:
        for box in self.mailboxes:
            box.close()


def is_maildir(path: Path) -> bool:
    return all((path / part).is_dir() for part in ("cur", "new"))


def is_mbox(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(len(MBOX_MAGIC)) == MBOX_MAGIC
    except OSError:
        return False


def discover(paths: Sequence[Path]) -> Found:
    """Find the messages under the paths; a file named explicitly is always taken as mail.

    In directories (walked recursively, in name order): ``*.eml`` files, mbox files (recognised by
    their first line, whatever their name) and Maildir folders (``cur`` and ``new`` inside,
    Maildir++ subfolders included); other files are skipped.
    """
    found = Found()
    for path in paths:
        if path.is_dir():
            _walk(path, found)
        elif is_mbox(path):
            _add_mbox(path, found)
        else:
            found.messages.append(_file_ref(path))
    return found


def _walk(root: Path, found: Found) -> None:
    for directory, subdirs, files in os.walk(root):
        here = Path(directory)
        subdirs.sort()
        if is_maildir(here):
            _add_maildir(here, found)
            subdirs[:] = [d for d in subdirs if d not in MAILDIR_PARTS]
            continue  # files beside cur/new are the mail server's own (indexes, uidlists)
        for name in sorted(files):
            path = here / name
            if name.startswith("."):
                continue
            if name.lower().endswith(".eml"):
                found.messages.append(_file_ref(path))
            elif is_mbox(path):
                _add_mbox(path, found)
            else:
                found.skipped.append(path)


def _file_ref(path: Path) -> MessageRef:
    return MessageRef(str(path), path.read_bytes)


def _add_mbox(path: Path, found: Found) -> None:
    box = mailbox.mbox(path, create=False)
    found.mailboxes.append(box)
    found.messages.extend(_box_refs(box, path, box.keys()))


def _add_maildir(path: Path, found: Found) -> None:
    box = mailbox.Maildir(path, factory=None, create=False)
    found.mailboxes.append(box)
    found.messages.extend(_box_refs(box, path, sorted(box.keys())))


def _box_refs(
    box: mailbox.Mailbox, path: Path, keys: Iterable[str | int]
) -> list[MessageRef]:
    return [MessageRef(f"{path}#{key}", _loader(box, key)) for key in keys]


def _loader(box: mailbox.Mailbox, key: str | int) -> Callable[[], bytes]:
    def load() -> bytes:
        return box.get_bytes(key)  # type: ignore[arg-type]

    return load


@dataclass(slots=True)
class Importer:
    """Reads the messages one by one and stores them ``batch_size`` to a transaction."""

    pipeline: Pipeline
    envelope: Envelope
    batch_size: int = 200
    on_progress: Callable[[int], None] | None = None
    decider: Decider | None = None  # default: the pipeline's own
    counts: Counter[str] = field(default_factory=Counter)  # outcome kind -> messages
    unreadable: list[str] = field(default_factory=list)

    async def run(self, messages: Iterable[MessageRef]) -> Counter[str]:
        """Raises StoreUnavailable when a batch cannot be committed; counts hold what was.

        Each batch is accepted before the one before it is decided, so the decider can parse the
        next batch (in its parse processes) while it applies the current one."""
        batch: list[RawMail] = []
        waiting: list[Accepted] = []  # accepted, not decided yet
        for ref in messages:
            try:
                data = ref.load()
            except (OSError, KeyError) as exc:
                logger.warning("cannot read %s: %s", ref.origin, exc)
                self.unreadable.append(ref.origin)
                self.counts["unreadable"] += 1
                self._advance(1)
                continue
            batch.append(RawMail(data, self.envelope))
            if len(batch) >= self.batch_size:
                accepted = await self.pipeline.accept_many(batch)
                await self._decide(waiting)
                waiting, batch = accepted, []
        if batch:
            accepted = await self.pipeline.accept_many(batch)
            await self._decide(waiting)
            waiting = accepted
        await self._decide(waiting)
        return self.counts

    async def _decide(self, accepted: list[Accepted]) -> None:
        if not accepted:
            return
        outcomes = await self.pipeline.decide_accepted(accepted, self.decider)
        self.counts.update(outcome.kind for outcome in outcomes)
        self._advance(len(accepted))

    def _advance(self, n: int) -> None:
        if self.on_progress is not None:
            self.on_progress(n)
