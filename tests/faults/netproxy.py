"""A TCP proxy between one member and the NATS server, to delay or drop its traffic.

``delay`` holds every chunk for that long (order is kept); ``cut`` drops the member's
connections with whatever was in flight and refuses new ones until ``heal``, so the member's
client reconnects later and its subscriptions miss what was published meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib

from ops.natsserver import free_port


class NetProxy:
    """Listens on a free loopback port and forwards to ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.listen_port = free_port()
        self.delay = 0.0
        self.refusing = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.listen_port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._close_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        """Drop every connection now, losing what was in flight, and refuse new ones."""
        self.refusing = True
        self._close_all()

    def heal(self) -> None:
        self.refusing = False
        self.delay = 0.0

    def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst, (writer, up_writer)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        loop = asyncio.get_running_loop()
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await held.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(chunk)
                await dst.drain()

        sender = asyncio.create_task(deliver())
        try:
            while chunk := await src.read(65536):
                held.put_nowait((loop.time() + self.delay, chunk))
        except (ConnectionError, OSError):
            pass
        finally:
            # What was read before the end still goes out, after its delay.
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                await asyncio.wait_for(_drained(held, sender), self.delay + 1.0)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            for writer in pair:
                writer.transport.abort()
                self._writers.discard(writer)


async def _drained(held: asyncio.Queue, sender: asyncio.Task) -> None:
    while not held.empty() and not sender.done():  # noqa: ASYNC110 (a queue has no drained event)
        await asyncio.sleep(0.01)
