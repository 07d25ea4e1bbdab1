"""A TCP proxy for fault tests: forward, cut, black-hole or half-open the path to a real service.

It runs its own event loop in a thread, so sync tests and async tests (and the `mailsvc serve`
subprocess that connects through it) can all use it. Modes:

- ``forward``: pass bytes both ways (the normal state).
- ``cut``: close every connection at once and refuse new ones (they are accepted and closed): the
  service crashed or restarted, the client sees EOF / connection reset.
- ``blackhole``: nothing gets through and nothing is ever answered, but nothing is closed either:
  open connections go silent, new ones are accepted (the TCP handshake succeeds) and then hang.
  A firewall dropping packets, a frozen VM.
- ``half_open``: the open connections go silent for ever (both ends stay open, as after a NAT
  or firewall forgot them, or the peer host vanished); new connections work normally.

A connection that went silent never comes back, even after ``forward()``: its peer has to notice
(timeouts, keepalives) and open a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

Mode = Literal["forward", "cut", "blackhole", "half_open"]
T = TypeVar("T")


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    silent: bool = False  # frozen: bytes are read and dropped, nothing is closed
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for writer in (self.client, self.upstream):
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.transport.abort()


class FaultProxy:
    """``with FaultProxy(port) as proxy:`` connect to ``proxy.port``, then ``proxy.cut()`` etc."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "forward"
        self.port = 0
        self.accepted = 0
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="fault-proxy")
        self._server: asyncio.Server | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    # --- faults ----------------------------------------------------------------------------

    def forward(self) -> None:
        """Back to normal for new connections (silenced ones stay silent)."""
        self._call(self._set("forward"))

    def cut(self) -> None:
        self._call(self._set("cut"))

    def blackhole(self) -> None:
        self._call(self._set("blackhole"))

    def half_open(self) -> None:
        self._call(self._set("half_open"))

    def open_connections(self) -> int:
        return self._call(self._count())

    # --- inside the loop -------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=30)

    async def _count(self) -> int:
        return sum(1 for link in self._links if not link.silent)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.close()
        self._links.clear()
        await asyncio.sleep(0.05)  # let the cancelled pumps finish

    async def _set(self, mode: Mode) -> None:
        self.mode = mode
        if mode == "cut":
            for link in list(self._links):
                link.close()
            self._links.clear()
        elif mode in ("blackhole", "half_open"):
            for link in self._links:
                link.silent = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer)
        if self.mode == "cut":
            writer.transport.abort()
            return
        self._links.add(link)
        if self.mode == "blackhole":
            link.silent = True
            link.tasks = [asyncio.create_task(self._drain(reader))]
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._links.discard(link)
            writer.transport.abort()
            return
        link.upstream = up_writer
        mode = self._mode_now()  # it may have changed while connecting
        if mode == "cut":
            link.close()
            self._links.discard(link)
            return
        link.silent = mode == "blackhole"
        link.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, link)),
            asyncio.create_task(self._pump(up_reader, writer, link)),
        ]

    def _mode_now(self) -> Mode:
        return self.mode

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if link.silent:
                    continue  # swallowed: nothing reaches the other side, nothing is closed
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        if link.silent:
            await asyncio.Event().wait()  # stay open, stay silent
        link.close()
        self._links.discard(link)

    @staticmethod
    async def _drain(reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(65536):
                pass
        await asyncio.Event().wait()
