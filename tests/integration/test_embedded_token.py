"""The embedded default's SoftHSM token is initialised with its PINs typed on a pseudo-terminal: they
never appear on a command line, and the PIN files log in."""
from __future__ import annotations

import asyncio
import os
import sys
import threading

from shomei.embedded import EmbeddedToken


async def test_a_new_token_logs_in_with_its_pin_and_no_pin_was_on_a_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTHSM2_CONF", os.environ.get("SOFTHSM2_CONF", ""))  # restored after the test
    seen: list[bytes] = []
    stop = threading.Event()

    def watch():  # every command line on the host while the token is made
        while not stop.is_set():
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        seen.append(open(f"/proc/{entry}/cmdline", "rb").read())
                    except OSError:
                        pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        info = EmbeddedToken(tmp_path / "softhsm", label="pty-test").ensure()
    finally:
        stop.set()
        watcher.join()
    pins = [(tmp_path / "softhsm" / name).read_text().strip() for name in ("user.pin", "so.pin")]
    assert any(b"softhsm2-util" in cmd for cmd in seen)  # the watcher saw the tool run ...
    assert not any(pin.encode() in cmd for cmd in seen for pin in pins)  # ... and never a PIN
    # Log in with the PIN file in a process of its own (a process's PKCS#11 library keeps the token
    # directory it was first initialised with: the session's).
    check = ("import asyncio, sys; from hsm.pkcs11_signer import PKCS11Signer, read_pin\n"
             "async def main():\n"
             "    s = PKCS11Signer(sys.argv[1], sys.argv[2], read_pin(sys.argv[3], 'NONE'))\n"
             "    await s.open(); await s.ping(); await s.close()\n"
             "asyncio.run(main())")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", check, info.module, info.label, info.pin_file,
                                                env={**os.environ, "SOFTHSM2_CONF": info.conf},
                                                stderr=asyncio.subprocess.PIPE)
    _out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
