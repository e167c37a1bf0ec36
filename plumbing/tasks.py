"""Background tasks that live as long as an aiohttp application."""
from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web


def run_in_background(app: web.Application, name: str, make_coro) -> None:
    """Run ``make_coro()`` as a task for the application's lifetime; cancel it on cleanup."""
    async def _ctx(_app):
        task = asyncio.create_task(make_coro(), name=name)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(_ctx)
