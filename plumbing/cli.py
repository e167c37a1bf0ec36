"""What the commands of each use case run in: the shell builds a CommandContext (how configuration is
loaded, the embedded default included) and hands it to every command as click's context object, so a
use case's CLI needs nothing of the shell."""
from __future__ import annotations

import asyncio
import getpass
import sys
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

import click

from ca_core.config import Config
from ca_core.errors import ShomeiError

from .runtime import Runtime, open_runtime

T = TypeVar("T")


def command_user() -> str:
    """Who runs an operator command (the operating-system user), for its audit record."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def fail(exc: ShomeiError) -> None:
    """Print a typed error as one line and exit with status 2."""
    click.echo(f"error: {exc.message}", err=True)
    sys.exit(2)


@dataclass(frozen=True)
class CommandContext:
    load_config: Callable[[], Config]

    def config(self) -> Config:
        """The configuration (a ShomeiError ends the command with its message)."""
        try:
            return self.load_config()
        except ShomeiError as exc:
            fail(exc)

    def run(self, fn: Callable[[Runtime], Awaitable[T]], cfg: Config | None = None) -> T:
        """Open a Runtime, run ``fn(runtime)`` and close it; a ShomeiError ends the command."""
        cfg = cfg or self.config()

        async def _main():
            rt = await open_runtime(cfg)
            try:
                return await fn(rt)
            finally:
                await rt.close()

        try:
            return asyncio.run(_main())
        except ShomeiError as exc:
            fail(exc)


pass_context = click.make_pass_decorator(CommandContext)
