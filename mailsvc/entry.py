"""The ``mailsvc`` console script. `mailsvc ingest` of mail goes the short way first: handed
to a running decide worker (``ingest/handover.py``) without loading the rest of mailsvc; anything
else, and ingest without a running worker, is the full command line (``cli.py``).

Every command loads its code with the garbage collector off and then freezes what it loaded
(``loaded``); `mailsvc import` and `mailsvc ingest` end with ``exit_now``, without the
interpreter's teardown."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import gc
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailsvc.config import Settings
    from mailsvc.mail import RawMail


# What the processes that parse for `mailsvc import` import before they are forked: the same
# as ``ingest.prepare.PRELOAD`` (not imported from there: that would load it first).
PARSING_MODULES = ["mailsvc.ingest.prepare", "mailparser"]


def main() -> None:
    # Loading mailsvc makes some half a million objects that live as long as the process: the
    # collector would go through them again and again while they load (a sixth of the time)
    # and in every full collection after. Off while they load, then kept out of its way.
    gc.disable()
    command = sys.argv[1:2]
    if command == ["ingest"]:
        status = _ingest(sys.argv[2:])
        if status is not None:
            exit_now(status)
    if command == ["import"]:
        _start_fork_server()
    from mailsvc.cli import main as full

    loaded()
    if command not in (["ingest"], ["import"]):
        full()
        return
    try:
        full()
    except SystemExit as done:  # all committed and printed
        exit_now(_status(done))


def loaded() -> None:
    """The code is loaded: what exists now lives as long as the process; collect the rest."""
    gc.freeze()
    gc.enable()


def exit_now(status: int) -> None:
    """Exit without tearing the interpreter down module by module (a tenth of a second and more
    after a large import): the work is committed and printed, and a supervised process should be
    gone as soon as it says so. The exit handlers still run (they remove the parsing processes'
    temporary directory, among others)."""
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # A reader that went away (`| head`), a closed stream: nothing left to tell it.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


def _status(done: SystemExit) -> int:
    if done.code is None or isinstance(done.code, int):
        return done.code or 0
    sys.stderr.write(f"{done.code}\n")
    return 1


def _start_fork_server() -> None:
    """`mailsvc import` parses in processes forked from a fork server that has imported the
    parsing code (``decider.parse_pool``). Started now, in a thread, it imports that code while
    this process imports the rest, and the parsing processes are up by the first mails. (A small
    import that parses here leaves it unused: it ends with this process.)"""
    import multiprocessing
    import threading
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(PARSING_MODULES)
    threading.Thread(target=forkserver.ensure_running, name="fork-server-start",
                     daemon=True).start()


def _arguments(argv: list[str]) -> argparse.Namespace | None:
    """``FILES... [--to ADDRESS] [--from ADDRESS]``; None for anything else (help, a typo):
    the full command line answers those in its own words."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--to")
    parser.add_argument("--from", dest="sender")
    try:
        arguments, unknown = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):
        return None
    if unknown or any(name.startswith("-") and name != "-" for name in arguments.files):
        return None
    return arguments


def _ingest(argv: list[str]) -> int | None:
    """`mailsvc ingest ARGS` the short way: the exit status, or None for the full command (it
    reports usage and configuration errors)."""
    from mailsvc.config import load_settings
    from mailsvc.errors import ConfigError
    from mailsvc.ingest.handover import EX_NOINPUT, InputError, read_inputs

    arguments = _arguments(argv)
    if arguments is None:
        return None
    try:
        settings = load_settings()
    except ConfigError:
        return None
    address = (arguments.to or settings.bcc_address[0]).lower()
    role = settings.intake_roles.role_of(address)
    if role is None:
        return None
    try:
        raws = read_inputs(arguments.files, address, role, arguments.sender)
    except InputError as exc:
        sys.stderr.write(f"{exc}\n")
        return EX_NOINPUT
    return ingest_mails(settings, raws)


def ingest_mails(settings: Settings, raws: Sequence[RawMail]) -> int:
    """Hand the mails to a running decide worker, else decide them here; print the outcomes;
    the exit status."""
    from mailsvc.crmstore.intake_writer import IntakeUnavailable
    from mailsvc.ingest.handover import EX_TEMPFAIL, hand_over, print_outcomes

    loaded()
    try:
        outcomes = asyncio.run(hand_over(settings, raws))
    except IntakeUnavailable as exc:
        sys.stderr.write(f"store unavailable: {exc}\n")
        return EX_TEMPFAIL
    if outcomes is None:
        gc.disable()
        from mailsvc.cli import ingest_inline

        loaded()
        return ingest_inline(settings, list(raws))
    return print_outcomes(outcomes)
