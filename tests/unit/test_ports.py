"""The API's listening sockets, bound before SMTP starts and handed to uvicorn, behave like the
ones asyncio would bind itself."""

from __future__ import annotations

import asyncio
import socket

from mailsvc.ports import Listener, bind_listening


async def test_connections_on_a_bound_socket_send_without_waiting_for_acks() -> None:
    # Without TCP_NODELAY every response written in two parts waits for the client's delayed
    # ACK: about 40 ms on each API request.
    [sock] = bind_listening(Listener("127.0.0.1", 0, "MAILSVC_API_PORT"))
    nodelay: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def accepted(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted_socket = writer.get_extra_info("socket")
        nodelay.set_result(accepted_socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(accepted, sock=sock)
    async with server:
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        assert await asyncio.wait_for(nodelay, 60) == 1
        writer.close()
