"""A token PIN given in the environment is taken out of it at start: no child process (the workers, and
what they start) inherits it in its environment or sees it on a command line, and the workers still
open the token. (The operator's own process was started with it: /proc keeps its initial environment.)"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from shomei.embedded import free_port


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_pin_from_the_environment_reaches_no_child(stack_env, cfg, tmp_path):
    pin = Path(cfg.hsm.pin_file).read_text().strip()
    port, private = free_port(), free_port()
    env = {k: v for k, v in stack_env.items() if k != "SHOMEI_PKCS11_PIN_FILE"}
    env.update({"SHOMEI_PKCS11_PIN": pin, "SHOMEI_LISTEN": f"127.0.0.1:{port}",
                "SHOMEI_PRIVATE_LISTEN": f"127.0.0.1:{private}", "SHOMEI_VAR_DIR": str(tmp_path / "var")})
    proc = subprocess.Popen([str(Path(sys.executable).with_name("shomei")), "serve", "--workers", "2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "w"))
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    if resp.status == 200 and len(_children(proc.pid)) >= 2:
                        break
            except OSError:
                pass
            time.sleep(0.3)
        else:
            raise AssertionError("the service did not become healthy")
        workers = _children(proc.pid)
        assert len(workers) >= 2  # each opened the token with the PIN
        assert pin.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        for pid in workers:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert b"SHOMEI_PKCS11_PIN=" not in environ and pin.encode() not in environ, pid
            assert pin.encode() not in cmdline, pid
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert "Traceback" not in (tmp_path / "serve.log").read_text()
    assert os.environ.get("SHOMEI_PKCS11_PIN") is None
