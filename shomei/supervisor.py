"""The master process of `shomei serve --workers N`: starts the workers, restarts one that dies (with a
back-off when it keeps dying), and tells the workers how many are alive through a small state file
that /healthz reports. Scheduled work is not tied to any worker: every worker runs the CRL schedule
and responder renewal under the database's leases, so losing one loses no work."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger("shomei.supervisor")

STATE_ENV = "SHOMEI_SUPERVISOR_STATE"  # where workers find the state file
FIRST_DELAY, MAX_DELAY, STABLE_AFTER = 1.0, 30.0, 60.0  # seconds


def read_state() -> dict | None:
    """The supervisor's last word, for a worker's /healthz (None when not run by a supervisor)."""
    path = os.environ.get(STATE_ENV)
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


class Supervisor:
    def __init__(self, start: Callable[[int], object], count: int, state_file: Path):
        self._start = start  # index -> a started multiprocessing.Process
        self.count = count
        self.state_file = state_file
        self.procs: dict[int, object] = {}
        self.started_at: dict[int, float] = {}
        self.delay: dict[int, float] = {}
        self.due: dict[int, float] = {}  # index -> when a dead worker is started again
        self.restarts = 0
        self.stopping = False
        # The master's metrics go to the workers' shared folder (PROMETHEUS_MULTIPROC_DIR, set by the
        # caller after prometheus_client was imported: choose its file-backed values now).
        from prometheus_client import Counter, values
        values.ValueClass = values.MultiProcessValue()
        self._restarts = Counter("shomei_worker_restarts_total", "Workers restarted after they died")

    def _launch(self, i: int) -> None:
        self.procs[i] = self._start(i)
        self.started_at[i] = time.monotonic()

    def _write_state(self) -> None:
        live = sum(1 for p in self.procs.values() if p.is_alive())
        state = {"expected": self.count, "live": live, "restarts": self.restarts,
                 "pids": {str(i): p.pid for i, p in self.procs.items() if p.is_alive()}}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_file)

    def run(self, poll: float = 0.2) -> None:
        for i in range(self.count):
            self._launch(i)
        self._write_state()
        while not self.stopping:
            time.sleep(poll)
            now = time.monotonic()
            changed = False
            for i, proc in list(self.procs.items()):
                if proc.is_alive() or self.stopping:
                    continue
                if i not in self.due:
                    lived = now - self.started_at[i]
                    delay = FIRST_DELAY if lived > STABLE_AFTER else min(MAX_DELAY, 2 * self.delay.get(i, FIRST_DELAY / 2))
                    self.delay[i] = delay
                    self.due[i] = now + delay
                    log.error("worker %d (pid %d) died with exit code %s after %.1f s; restarting in %.1f s",
                              i, proc.pid, proc.exitcode, lived, delay)
                    _mark_dead(proc.pid)
                    changed = True
                elif now >= self.due[i]:
                    del self.due[i]
                    self._launch(i)
                    self.restarts += 1
                    self._restarts.inc()
                    changed = True
            if changed:
                self._write_state()

    def stop(self) -> None:
        """Terminate every worker (SIGTERM: they finish what they serve) and wait for them."""
        self.stopping = True
        for proc in self.procs.values():
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs.values():
            proc.join()


def _mark_dead(pid: int) -> None:
    try:
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid)
    except Exception:  # metrics files are best effort
        pass
