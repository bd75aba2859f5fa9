"""Pause, resume, stop and hand-over of a run's round loop, decided at round boundaries only."""

from __future__ import annotations

import asyncio


class RunControl:
    """Pause / resume / stop of a running loop. Checked before a round starts: a round already started
    always finishes, so stopping never leaves work half done that the next start would have to redo.

    A hand-over ends the loop at that same boundary so that a successor loop (the run under a new config)
    takes over with this control: a pause carries over."""

    def __init__(self) -> None:
        self._paused = False
        self.stopping = False
        self.handing_over = False
        self._changed = asyncio.Event()

    @property
    def paused(self) -> bool:
        return self._paused and not self.stopping

    def pause(self) -> None:
        self._paused = True
        self._wake()

    def resume(self) -> None:
        self._paused = False
        self._wake()

    def stop(self) -> None:
        self.stopping = True
        self._wake()

    def hand_over(self) -> None:
        self.handing_over = True
        self._wake()

    def take_over(self) -> None:
        """The successor's start: its rounds may start again (unless paused or stopped)."""
        self.handing_over = False

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def may_start(self) -> bool:
        """Waits while paused; False once a stop or a hand-over was asked for."""
        while self._paused and not (self.stopping or self.handing_over):
            await self._changed.wait()
        return not (self.stopping or self.handing_over)
