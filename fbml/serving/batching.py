"""Micro-batching: requests that arrive while a batch runs go together into the next one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Generic, TypeVar

import attrs

MAX_BATCH = 32

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@attrs.define(eq=False)
class MicroBatcher(Generic[ItemT, ResultT]):
    """Runs ``infer`` (a list of items -> one result each) on ``executor``; the items submitted while
    a batch runs go together into the next one, at most ``max_batch`` at a time.

    Mutable by nature: it holds the waiting items. Its state is only touched on the event loop.
    """

    infer: Callable[[list[ItemT]], list[ResultT]]
    executor: Executor
    max_batch: int = MAX_BATCH
    _waiting: list[tuple[ItemT, asyncio.Future[ResultT]]] = attrs.field(factory=list, init=False)
    _draining: asyncio.Task[None] | None = attrs.field(default=None, init=False)

    async def __call__(self, item: ItemT) -> ResultT:
        """``infer``'s result for ``item``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ResultT] = loop.create_future()
        self._waiting.append((item, future))
        if self._draining is None:
            self._draining = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
                live = [(item, future) for item, future in batch if not future.done()]
                if live:
                    await self._run(loop, live)
        finally:
            self._draining = None

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[ItemT, asyncio.Future[ResultT]]]) -> None:
        try:
            results = await loop.run_in_executor(self.executor, self.infer, [item for item, _ in batch])
        except Exception as error:  # handed to every waiting request, which answers for it
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
