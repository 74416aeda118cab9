"""Group commit: writes submitted in one turn of the event loop, or while a group is in
flight, go together.

A worker ends several jobs at about the same time (its free slots are claimed together,
no-op modules finish together). :class:`GroupedWrites` sends a write after one turn of
the event loop, with the writes submitted meanwhile (by the tasks woken together with its
caller; at most ``max_size``, one per key): an idle process waits for nothing but that turn. Writes that arrive while a
group is in flight queue up and are sent together as soon as it returns, as one group:
one transaction and one round trip instead of one each. No timer delays anything.

Each caller gets its own outcome (a result or an exception). Once a group is sent it is
shielded from cancellation, so the outcome of every write in it reaches its caller: a
caller cancelled while its write is being written waits for that outcome and returns it
(the cancellation reaches it at its next checkpoint); a caller cancelled while its write
is still queued behind a group in flight takes it out of the queue (it is never sent).
The caller leading a group is not cancelled during its turn of the loop: it sends the
group, its own write in it, then learns of its cancellation. With ``shield_alone=False``
a caller writing its own write alone is not shielded: it is the only one a cancellation
of that write concerns (as for a write without grouping). Two writes with the same key
never share a group: the second waits for the next.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel

__all__ = ["GroupedWrites"]

I = TypeVar("I")  # noqa: E741 - the item a caller submits
R = TypeVar("R")


class _Pending(Generic[I, R]):
    __slots__ = ("done", "error", "item", "result", "wake")

    def __init__(self, item: I) -> None:
        self.item = item
        self.done = False
        self.result: R | None = None
        self.error: BaseException | None = None
        self.wake: anyio.Event | None = None


class GroupedWrites(Generic[I, R]):
    """``await submit(item)`` runs ``write(group)`` for a group of items, the caller's
    among them, and returns the caller's outcome.

    ``write`` gets the items in submission order and returns one outcome per item (its
    result, or the exception to raise to its caller); if ``write`` itself raises, every
    caller of the group gets that exception."""

    def __init__(
        self,
        write: Callable[[Sequence[I]], Awaitable[Sequence[R | BaseException]]],
        *,
        key: Callable[[I], Hashable],
        max_size: int = 64,
        shield_alone: bool = True,
    ) -> None:
        if max_size < 1:
            raise ValueError("a group holds at least one write")
        self._write, self._key, self._max_size = write, key, max_size
        self._shield_alone = shield_alone
        self._queue: list[_Pending[I, R]] = []
        self._writing = False
        #: Groups written and items in them (for tests and benchmarks).
        self.groups = 0
        self.items = 0

    async def submit(self, item: I) -> R:
        pending: _Pending[I, R] = _Pending(item)
        self._queue.append(pending)
        try:
            while not pending.done:
                if not self._writing:
                    await self._lead(pending)
                else:
                    pending.wake = anyio.Event()
                    await pending.wake.wait()
        except BaseException as exc:
            queued = not pending.done and pending in self._queue
            if pending.done or queued or not isinstance(exc, anyio.get_cancelled_exc_class()):
                if queued:
                    self._queue.remove(pending)  # never sent
                raise
            # Cancelled while its group is being written (shielded): its outcome is on its
            # way, and the caller must learn it (a job stored although its caller was told
            # "cancelled" would be created again by a caller that retries).
            assert pending.wake is not None  # it was waiting for the group's end
            with anyio.CancelScope(shield=True):
                await pending.wake.wait()
        finally:
            self._hand_over()
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]  # set with done, error None

    def _take(self) -> list[_Pending[I, R]]:
        group: list[_Pending[I, R]] = []
        keys: set[Hashable] = set()
        for pending in self._queue:
            key = self._key(pending.item)
            if key in keys:
                continue  # the same key twice: the second goes in the next group
            keys.add(key)
            group.append(pending)
            if len(group) == self._max_size:
                break
        taken = set(map(id, group))
        self._queue = [p for p in self._queue if id(p) not in taken]
        return group

    async def _lead(self, own: _Pending[I, R]) -> None:
        """Write the next group: the oldest queued writes (the caller's, ``own``, is among
        them, unless a write with the same key is ahead of it: then it leads again after)."""
        self._writing = True
        # One turn of the event loop first: writes of tasks woken together with this one
        # (jobs claimed together end together) join its group instead of waiting for the
        # next. Shielded from anyio's cancellation; anything else raised here (a native
        # cancel, KeyboardInterrupt) takes nothing and sends nothing, and the next queued
        # caller leads (submit hands over).
        try:
            await anyio.lowlevel.cancel_shielded_checkpoint()
        except BaseException:
            self._writing = False
            raise
        group = self._take()
        outcomes: Sequence[R | BaseException]
        try:
            with anyio.CancelScope(shield=self._shield_alone or group != [own]):
                try:
                    outcomes = await self._write([p.item for p in group])
                    if len(outcomes) != len(group):
                        raise RuntimeError(f"{len(outcomes)} outcomes for {len(group)} writes")
                except Exception as exc:  # noqa: BLE001 - handed to every caller of the group
                    outcomes = [exc] * len(group)
        except BaseException as exc:  # KeyboardInterrupt, say: nobody of the group may wait forever
            outcomes = [exc] * len(group)
            raise
        finally:
            self._writing = False
            self.groups += 1
            self.items += len(group)
            for pending, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    pending.error = outcome
                else:
                    pending.result = outcome
                pending.done = True
                if pending.wake is not None:
                    pending.wake.set()

    def _hand_over(self) -> None:
        """Wake the oldest queued caller when nobody is writing: it writes the next group."""
        if not self._writing and self._queue:
            wake = self._queue[0].wake
            if wake is not None:
                wake.set()
