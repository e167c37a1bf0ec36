"""The CRL folder unwritable: publication fails, the last good CRL keeps being served, /healthz warns
(every process reads the failure from the database), and the next publication after the folder is
writable again succeeds and clears the warning."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from crl_publisher.publisher import Publisher, Target


def _chattr(flag: str, path) -> bool:
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


async def test_unwritable_crl_folder_keeps_the_last_crl_and_warns(rt, http):
    issuer = rt.issuers.current("auth")
    pub = Publisher.from_runtime(rt)
    target = Target(issuer, "full", "base")
    good = await pub.publish(target)
    assert good.published is not None
    folder = pub.out / target.path.rsplit("/", 1)[0]
    before = (await (await http.get("/crl/auth/full.crl")).read())
    if not _chattr("+i", folder):  # immutable: not even root may create a file in it
        pytest.skip("this file system has no immutable attribute (chattr +i)")
    try:
        with pytest.raises(OSError):
            await pub.publish(target)
        resp = await http.get("/crl/auth/full.crl")
        assert resp.status == 200 and await resp.read() == before  # the last good CRL
        health = await (await http.get("/healthz")).json()
        assert any(target.path in w and "PermissionError" in w for w in health.get("warnings", [])), health
    finally:
        _chattr("-i", folder)
    again = await pub.publish(target)
    assert again.published.number > good.published.number
    health = await (await http.get("/healthz")).json()
    assert not any(target.path in w for w in health.get("warnings", [])), health
