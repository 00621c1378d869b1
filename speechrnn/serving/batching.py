"""Concurrent requests gathered into one forward pass: a request waits at most ``max_wait_s`` for
others to join it, and a batch holds at most ``max_batch_size``; the model runs in one thread of its
own, so the event loop keeps accepting requests while a batch runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

Item = TypeVar("Item")
Answer = TypeVar("Answer")


class MicroBatcher(Generic[Item, Answer]):
    """``await batcher.submit(item)`` -> ``run_batch([..., item, ...])``'s answer for ``item``.

    ``run_batch`` takes a list of items and returns one answer per item, in order; an exception it
    raises is raised to every request of that batch (and only those). Start with :meth:`start` inside
    the event loop, stop with :meth:`stop`."""

    def __init__(
        self, run_batch: Callable[[list[Item]], list[Answer]], max_batch_size: int = 16, max_wait_s: float = 0.005
    ) -> None:
        if max_batch_size < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch_size must be >= 1 and max_wait_s >= 0, got {max_batch_size}, {max_wait_s}")
        self.run_batch, self.max_batch_size, self.max_wait_s = run_batch, max_batch_size, max_wait_s
        self.queue: asyncio.Queue[tuple[Item, asyncio.Future[Answer]]] | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="speechrnn-batch")
        self.task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=False)

    async def submit(self, item: Item) -> Answer:
        if self.queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        await self.queue.put((item, future))
        return await future

    async def _loop(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            batch = [(item, future) for item, future in batch if not future.cancelled()]  # clients gone
            if not batch:
                continue
            self.batches, self.items = self.batches + 1, self.items + len(batch)
            try:
                answers = await loop.run_in_executor(self.executor, self.run_batch, [item for item, _ in batch])
            except Exception as error:  # noqa: BLE001 - the batch's requests get it, the loop goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result(answer)
