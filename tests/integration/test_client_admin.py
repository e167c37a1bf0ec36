"""Operators manage clients: `shomei client list`, `disable` (refused everywhere within a second, the
credential cached by the service included) and `rotate` (the old credential stops, the new one works)."""
from __future__ import annotations

import asyncio
import secrets
import sys

from storage import clients
from tests.helpers import headers


async def shomei(*args, env):
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "shomei.cli", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def _healthy_call(http, token) -> int:
    resp = await http.post("/v1/holds", json={"request_id": "x", "serial": "zz"}, headers=headers(token))
    return resp.status  # 400 (bad serial) when the credential is accepted, 401 when it is not


async def _within_a_second(http, token, status) -> None:
    for _ in range(50):
        if await _healthy_call(http, token) == status:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the credential was not {status} within a second")


async def test_disable_and_rotate(http, rt, stack_env):
    name = f"admin-{secrets.token_hex(4)}"
    async with rt.pool.acquire() as conn:
        _c, token = await clients.register(conn, kind="terminal", name=name, municipality_code="131016")
    assert await _healthy_call(http, token) == 400  # accepted (and now cached by the service)
    rc, out, err = await shomei("client", "list", env=stack_env)
    assert rc == 0 and any(line.startswith(f"{name}\tterminal\t131016\t") and line.endswith("enabled")
                           for line in out.splitlines()), out
    rc, out, err = await shomei("client", "rotate", name, env=stack_env)
    assert rc == 0, err
    new = out.strip()
    await _within_a_second(http, token, 401)
    assert await _healthy_call(http, new) == 400
    rc, out, err = await shomei("client", "disable", name, env=stack_env)
    assert rc == 0 and "disabled" in out
    await _within_a_second(http, new, 401)
    rc, out, _err = await shomei("client", "list", env=stack_env)
    assert any(line.startswith(f"{name}\t") and "disabled" in line for line in out.splitlines())
    rc, out, err = await shomei("client", "disable", "nobody-at-all", env=stack_env)
    assert rc != 0 and "no client named" in err
