"""Sustained mixed load: `shomei serve --workers 2` under issuance, OCSP (cached and signed on demand),
window revocations and holds, and feed batches for --minutes (default 10), sampling every process's
resident memory every 30 s. Reports answers and errors (5xx, connection errors) per kind and the memory
growth of each process after the first two minutes of warm-up; the goal is 0 errors and flat memory.

    .venv/bin/python -m benchmarks.bench_sustained [--minutes 10]
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import secrets
import time
from collections import Counter
from pathlib import Path

import aiohttp
from cryptography import x509

from benchmarks.bench_issuance import _csr, _keys
from benchmarks.stack import Stack
from tests.ocsp_helpers import get_path, request_der


def _rss_kb(pid: int) -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _processes(master: int) -> dict[str, int]:
    """master, worker-0, worker-1 (by start order), leaving multiprocessing's resource tracker out."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master and b"resource_tracker" not in cmd:
                found.append(int(entry.name))
    return {"master": master, **{f"worker-{i}": pid for i, pid in enumerate(sorted(found))}}


class Load:
    """Issuance, window revocations and holds (the demo terminal) and feed batches (the demo feed) on the
    private listener, each with its client certificate; OCSP and CA certificates on the public one."""

    def __init__(self, public: str, private: str, terminal, feed, csrs: list[str]):
        self.public, self.private, self.csrs = public, private, csrs
        self.terminal, self.feed = terminal, feed  # benchmarks.stack.ClientCredential
        self.answers: Counter = Counter()
        self.errors: Counter = Counter()
        self.certs: list[tuple[x509.Certificate, str]] = []
        self.residents: list[str] = []
        self.issuers: dict[str, x509.Certificate] = {}
        self.rng = random.Random(7)

    def _hdr(self) -> dict:
        return self.terminal.headers()  # X-Operator-Id: the demo terminal's registered operator

    async def _call(self, kind: str, request) -> tuple[int, bytes] | None:
        try:
            async with request as resp:
                body = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.errors[f"{kind}: {type(exc).__name__}"] += 1
            return None
        if resp.status >= 500:
            self.errors[f"{kind}: {resp.status}"] += 1
        else:
            self.answers[kind] += 1
        return resp.status, body

    async def issue(self, http):
        code = f"{secrets.randbelow(10**11):011d}"
        i = self.rng.randrange(len(self.csrs))
        body = {"request_id": "s-" + secrets.token_hex(8), "municipality_code": "131016", "resident_code": code,
                "resident": {"name": "山田　太郎", "name_substitutes": "00000", "address": "東京都千代田区千代田１番１号",
                             "address_substitutes": "00000000000000", "birth_date": "319800515", "sex": "1"},
                "card_expires_on": "2035-05-15", "signing_csr": self.csrs[i],
                "auth_csr": self.csrs[(i + 1) % len(self.csrs)]}
        got = await self._call("issuance", http.post("/v1/certificates", json=body, headers=self._hdr()))
        if got and got[0] == 201:
            for item in json.loads(got[1])["certificates"]:
                self.certs.append((x509.load_pem_x509_certificate(item["certificate"].encode()), item["kind"]))
            self.residents.append(code)
            del self.certs[:-5000], self.residents[:-5000]  # the client's memory stays flat too

    async def ocsp(self, http):
        if not self.certs:
            return
        cert, kind = self.rng.choice(self.certs[-500:])
        fresh = self.rng.random() < 0.1  # one in ten signed on demand (a nonce), the rest cached
        der = request_der(cert, self.issuers[kind], nonce=secrets.token_bytes(16) if fresh else None)
        await self._call("ocsp", http.get(get_path(der)))

    async def revoke(self, http):
        if not self.certs:
            return
        cert, _kind = self.rng.choice(self.certs)
        path, body = (("/v1/holds", {}) if self.rng.random() < 0.3
                      else ("/v1/revocations", {"reason": "holder_request"}))
        await self._call("window", http.post(path, json={"request_id": "w-" + secrets.token_hex(8),
                                                         "serial": format(cert.serial_number, "x"), **body},
                                             headers=self._hdr()))

    async def feed_batch(self, http):
        occurred = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
        events = [{"event_id": "f-" + secrets.token_hex(8),
                   "resident_code": self.rng.choice(self.residents) if self.residents and self.rng.random() < 0.3
                   else f"{secrets.randbelow(10**11):011d}", "kind": "moved", "occurred_at": occurred}
                  for _ in range(100)]
        await self._call("feed", http.post("/v1/residency-events", json={"events": events}))

    async def run(self, seconds: float):
        until = time.monotonic() + seconds

        async def loop(action, pause, credential=None):
            base = self.private if credential else self.public
            connector = aiohttp.TCPConnector(ssl=credential.ssl_context()) if credential else None
            async with aiohttp.ClientSession(base, connector=connector,
                                             timeout=aiohttp.ClientTimeout(total=30)) as http:
                while time.monotonic() < until:
                    await action(http)
                    await asyncio.sleep(pause)

        async with aiohttp.ClientSession(self.public) as http:
            for kind in ("signing", "auth"):
                async with http.get(f"/ca/{kind}.crt") as resp:
                    self.issuers[kind] = x509.load_der_x509_certificate(await resp.read())
        await asyncio.gather(*[loop(self.issue, 0.01, self.terminal) for _ in range(2)],
                             *[loop(self.ocsp, 0) for _ in range(6)],
                             loop(self.revoke, 0.05, self.terminal), loop(self.feed_batch, 1.0, self.feed))


async def main(minutes: float, cache_entries: int | None) -> None:
    toml = f"[ocsp]\ncache_entries = {cache_entries}\n" if cache_entries else None
    with Stack(toml=toml) as stack:
        stack.serve(workers=2)
        terminal = stack.demo_credential("demo-terminal")
        feed = stack.demo_credential("demo-feed")
        csrs = [_csr(k) for k in _keys(8)]
        procs = _processes(stack.server.pid)
        load = Load(stack.public_url, stack.private_url, terminal, feed, csrs)
        samples: list[tuple[float, dict[str, int]]] = []

        async def sample():
            start = time.monotonic()
            while True:
                samples.append((time.monotonic() - start, {name: _rss_kb(pid) for name, pid in procs.items()}))
                await asyncio.sleep(30)

        sampler = asyncio.create_task(sample())
        started = time.monotonic()
        await load.run(minutes * 60)
        sampler.cancel()
        samples.append((time.monotonic() - started, {name: _rss_kb(pid) for name, pid in procs.items()}))

    print(f"\nSustained mixed load, {minutes:g} minutes, `shomei serve --workers 2` (2 cores; the load on the same"
          f" machine; ocsp.cache_entries {cache_entries or 'default'})")
    print("answers: " + ", ".join(f"{k} {v}" for k, v in sorted(load.answers.items())))
    print(f"errors (5xx or connection): {sum(load.errors.values())}" +
          (" - " + ", ".join(f"{k}: {v}" for k, v in load.errors.items()) if load.errors else ""))
    print("\nresident memory, MB")
    names = list(procs)
    print("minute  " + "  ".join(f"{n:>9s}" for n in names))
    for at, rss in samples:
        print(f"{at / 60:6.1f}  " + "  ".join(f"{rss.get(n, 0) / 1024:9.1f}" for n in names))
    warm = next((rss for at, rss in samples if at >= 120), samples[0][1])
    last = samples[-1][1]
    print("\ngrowth after the first 2 minutes: " + ", ".join(
        f"{n} {(last.get(n, 0) - warm.get(n, 0)) / 1024:+.1f} MB" for n in names))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--cache-entries", type=int, default=None,
                        help="ocsp.cache_entries of the server (default 50,000): a smaller cache fills sooner, so "
                             "what grows after it is full is what is not bounded")
    args = parser.parse_args()
    asyncio.run(main(args.minutes, args.cache_entries))
