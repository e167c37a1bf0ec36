"""Full CRL of N revoked entries and a delta of 10,000 changes, beside `openssl ca -gencrl` and
pyca/cryptography's CertificateRevocationListBuilder on the same entries, in one run.

    .venv/bin/python -m benchmarks.bench_crl [--sizes 1000000,10000000] [--delta-changes 10000]
                                             [--skip-openssl-above N] [--skip-cryptography-above N]

A private PostgreSQL and SoftHSM token are started in a temporary folder and removed afterwards.
N revoked certificates (minimal certificate rows, revocation rows with their entry DER) are loaded
inside PostgreSQL from generate_series; the same entries are exported to an openssl index.txt and
to a file the cryptography contender reads. Each contender runs in its own process; its peak memory
is that process's maximum resident set (getrusage), its time the work alone (not the interpreter
start or, for cryptography, reading the input file). shomei signs with the token (SoftHSM); openssl
and cryptography sign with an in-memory RSA-2048 key.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.stack import Stack

ID_BASE = 1_000_000_000  # certificate ids of the benchmark's rows, clear of the issuance sequence
NOT_AFTER = "2031-01-01 00:00:00+00"
REVOKED_AT = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


# -- children: one contender per process ------------------------------------------------------------

def _vm_hwm_mb(pid="self") -> float:
    """Peak resident set of a process image (VmHWM). Not ru_maxrss: Linux carries the parent's
    resident size across fork and exec into ru_maxrss, which would charge the benchmark's own memory
    to each contender."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _report(seconds: float, **extra) -> None:
    rss = _vm_hwm_mb()
    print(json.dumps({"seconds": seconds, "rss_mb": rss, **extra}), flush=True)


def child_shomei(kind: str) -> None:
    import logging
    if os.environ.get("BENCH_PHASES"):
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
        logging.getLogger("asyncio").setLevel(logging.WARNING)
    from ca_core import config
    from crl_publisher.publisher import Publisher, Target
    from plumbing.runtime import open_runtime

    async def run():
        rt = await open_runtime(config.load(), migrate=False)
        try:
            issuer = rt.issuers.current("signing")
            times = []
            # a delta is published twice against the same base: the first in a fresh process (statements
            # not yet prepared), the second as the scheduler inside `shomei serve` runs it
            for _ in range(2 if kind == "delta" else 1):
                start = time.perf_counter()
                outcome = await Publisher.from_runtime(rt).publish(Target(issuer, "full", kind))
                times.append(time.perf_counter() - start)
            p = outcome.published
            return times[-1], {"entries": p.entries, "bytes": p.bytes, "path": p.path, "number": p.number,
                               "cold_seconds": times[0]}
        finally:
            await rt.close()

    seconds, extra = asyncio.run(run())
    _report(seconds, **extra)


def child_openssl(workdir: str) -> None:
    start = time.perf_counter()
    proc = subprocess.Popen(["openssl", "ca", "-config", str(Path(workdir) / "ca.cnf"), "-gencrl", "-batch",
                             "-out", str(Path(workdir) / "openssl.crl")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    rss = 0.0
    while proc.poll() is None:  # VmHWM only grows: the last reading before exit is the peak
        try:
            if open(f"/proc/{proc.pid}/comm").read().strip() == "openssl":  # after exec only
                rss = max(rss, _vm_hwm_mb(proc.pid))
        except OSError:
            pass
        time.sleep(0.002)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(proc.stderr.read()[-2000:])
    print(json.dumps({"seconds": seconds, "rss_mb": rss}), flush=True)


def child_cryptography(workdir: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    wd = Path(workdir)
    key = serialization.load_pem_private_key((wd / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((wd / "ca.pem").read_bytes())
    raw = (wd / "entries.bin").read_bytes()  # 17 octets each: serial (16) + reason (0 = none)
    reasons = {1: x509.ReasonFlags.key_compromise, 3: x509.ReasonFlags.affiliation_changed,
               5: x509.ReasonFlags.cessation_of_operation}
    start = time.perf_counter()
    revoked = []
    for i in range(0, len(raw), 17):
        b = (x509.RevokedCertificateBuilder().serial_number(int.from_bytes(raw[i:i + 16], "big"))
             .revocation_date(REVOKED_AT))
        if raw[i + 16]:
            b = b.add_extension(x509.CRLReason(reasons[raw[i + 16]]), critical=False)
        revoked.append(b.build())
    del raw
    now = dt.datetime.now(dt.timezone.utc)
    # all entries handed to the builder in one go (add_revoked_certificate in a loop is quadratic)
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=ca.subject, last_update=now, next_update=now + dt.timedelta(days=2),
        revoked_certificates=revoked)
    der = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    seconds = time.perf_counter() - start
    (wd / "cryptography.crl").write_bytes(der)
    _report(seconds, bytes=len(der))


def run_child(env: dict, *args) -> dict:
    res = subprocess.run([sys.executable, "-m", "benchmarks.bench_crl", "--child", *args], env=env,
                         capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"child {args} failed: {res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# -- loading ---------------------------------------------------------------------------------------

# Entry templates: 30 len 02 10 <serial> 17 0d <revocationDate> [crlEntryExtensions with reasonCode].
def _templates():
    from ca_core.revocation import Reason, encode_entry

    serial = int.from_bytes(b"\x11" * 16, "big")
    out = {}
    for code, reason in ((0, Reason.unspecified), (1, Reason.key_compromise), (3, Reason.affiliation_changed),
                         (5, Reason.cessation_of_operation)):
        der = encode_entry(serial, REVOKED_AT, reason)
        cut = der.index(b"\x11" * 16)
        out[code] = (der[:cut], der[cut + 16:])
    return out


async def load(conn, *, gen_id: int, start: int, count: int, partition_size: int, effective: bool = True,
               bulk: bool = False, revoke_one_in: int = 1) -> None:
    """Insert ``count`` certificates (ids start+1..start+count) and the revocations of one in
    ``revoke_one_in`` of them in PostgreSQL.
    Reasons: 60% affiliationChanged, 25% cessationOfOperation, 10% unspecified, 5% keyCompromise.
    ``bulk``: a loader's shortcut for millions of rows (this private database only): triggers off,
    secondary indexes dropped and rebuilt afterwards; the rows are the same."""
    indexes = []
    if bulk:
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('certificate', 'revocation')"
            " AND indexname NOT IN (SELECT conindid::regclass::text FROM pg_constraint WHERE conindid <> 0)")
        await conn.execute("SET session_replication_role = replica")
        for ix in indexes:
            await conn.execute(f'DROP INDEX "{ix["indexname"]}"')
    t = _templates()
    serial = ("set_byte(decode(md5(($1::bigint + i)::text || 'bench'), 'hex'), 0,"
              " (get_byte(decode(md5(($1::bigint + i)::text || 'bench'), 'hex'), 0) % 127) + 1)")
    reason = "(CASE WHEN i % 20 < 12 THEN 3 WHEN i % 20 < 17 THEN 5 WHEN i % 20 < 19 THEN 0 ELSE 1 END)"
    entry = "CASE r " + " ".join(
        f"WHEN {code} THEN '\\x{pre.hex()}'::bytea || s || '\\x{post.hex()}'::bytea" for code, (pre, post) in t.items()
    ) + " END"
    t0 = time.perf_counter()
    # A certificate's status is derived from its revocation rows by triggers (migration 0006), and a CHECK
    # keeps status, status_reason and status_at consistent. With the triggers on, certificates are inserted
    # valid and the revocations' insert derives their status; in bulk (triggers off) the rows carry the
    # status the triggers would have derived. Each row is a resident of its own (at most one live
    # certificate of a kind per resident: certificate_one_live).
    derived = bulk and effective
    hit = f"i % {int(revoke_one_in)} = 0"
    await conn.execute(
        "INSERT INTO certificate (id, ca_generation_id, serial, kind, resident_hash, municipality_code, partition,"
        " not_before, not_after, status, status_reason, status_at, der)"
        f" SELECT $1::bigint + i, $2, {serial}, 'signing', int8send($1::bigint + i), '131016', ($1::bigint + i) / $4,"
        f" '2026-01-01', '{NOT_AFTER}',"
        + (f" CASE WHEN {hit} THEN 'revoked' ELSE 'valid' END, CASE WHEN {hit} THEN {reason} END,"
           f" CASE WHEN {hit} THEN $5::timestamptz END," if derived else " 'valid', NULL::smallint, NULL::timestamptz,")
        + " '\\x00'::bytea FROM generate_series(1, $3::bigint) AS i",
        start, gen_id, count, partition_size, *((REVOKED_AT,) if derived else ()))
    t1 = time.perf_counter()
    eff = "$4::timestamptz" if effective else "NULL"
    await conn.execute(
        "INSERT INTO revocation (certificate_id, ca_generation_id, serial, partition, cert_not_after, reason,"
        " revoked_at, effective_at, source, entry_der)"
        f" SELECT id, $2, s, partition, '{NOT_AFTER}', r, $4, {eff}, 'feed', {entry}"
        " FROM (SELECT c.id, c.serial AS s, c.partition, " + reason.replace("i %", "(c.id - $1::bigint) %") +
        " AS r FROM certificate c WHERE c.id > $1::bigint AND c.id <= $1::bigint + $3::bigint"
        f" AND (c.id - $1::bigint) % {revoke_one_in} = 0) x",
        start, gen_id, count, REVOKED_AT)
    t2 = time.perf_counter()
    if bulk:
        await conn.execute("SET maintenance_work_mem = '1GB'")
        for ix in indexes:
            await conn.execute(ix["indexdef"])
        await conn.execute("INSERT INTO crl_partition SELECT DISTINCT ca_generation_id, partition FROM certificate"
                           " ON CONFLICT DO NOTHING")
        await conn.execute("RESET session_replication_role")
    print(f"  certificates {t1 - t0:.1f} s, revocations {t2 - t1:.1f} s, indexes {time.perf_counter() - t2:.1f} s",
          file=sys.stderr)


async def export(conn, workdir: Path) -> None:
    """index.txt for openssl ca and entries.bin for the cryptography contender, from the database."""
    with open(workdir / "index.txt", "wb") as f:
        await conn.copy_from_query(
            "SELECT 'R', '310101000000Z', '260102030405Z' || CASE reason WHEN 1 THEN ',keyCompromise'"
            " WHEN 3 THEN ',affiliationChanged' WHEN 5 THEN ',cessationOfOperation' ELSE '' END,"
            " upper(encode(serial, 'hex')), 'unknown', '/CN=bench' FROM revocation"
            " WHERE ca_generation_id = (SELECT id FROM ca_generation WHERE ca_id = 'signing' AND is_current)"
            " AND released_at IS NULL AND effective_at IS NOT NULL", output=f)
    with open(workdir / "entries.bin", "wb") as f:
        await conn.copy_from_query(
            "SELECT string_agg(serial || set_byte('\\x00'::bytea, 0, reason), ''::bytea) FROM revocation"
            " WHERE ca_generation_id = (SELECT id FROM ca_generation WHERE ca_id = 'signing' AND is_current)"
            " AND released_at IS NULL AND effective_at IS NOT NULL GROUP BY id / 100000", output=_Strip(f),
            format="binary")
    (workdir / "index.txt.attr").write_text("unique_subject = no\n")


class _Strip:
    """Binary COPY of one bytea column to a file: drop the header, the per-row framing and trailer."""

    def __init__(self, f):
        self.f = f
        self.buf = b""

    async def __call__(self, data: bytes) -> None:
        self.buf += data
        if self.buf.startswith(b"PGCOPY\n\xff\r\n\x00"):
            self.buf = self.buf[19:]
        while len(self.buf) >= 6:
            if self.buf[:2] == b"\xff\xff":
                self.buf = b""
                return
            n = int.from_bytes(self.buf[2:6], "big")
            if len(self.buf) < 6 + n:
                return
            self.f.write(self.buf[6:6 + n])
            self.buf = self.buf[6 + n:]


def make_openssl_ca(workdir: Path) -> None:
    """An in-memory-key CA for the openssl and cryptography contenders (same name shape as ours)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "JPKI-TEST"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "JPKI for digital signature")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    (workdir / "ca.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (workdir / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (workdir / "crlnumber").write_text("1000\n")
    (workdir / "ca.cnf").write_text(
        "[ca]\ndefault_ca = bench\n[bench]\n"
        f"dir = {workdir}\ndatabase = $dir/index.txt\ncrlnumber = $dir/crlnumber\n"
        "certificate = $dir/ca.pem\nprivate_key = $dir/ca.key\ndefault_md = sha256\ndefault_crl_days = 2\n"
        "crl_extensions = crl_ext\n[crl_ext]\nauthorityKeyIdentifier = keyid:always\n")


# -- the run ---------------------------------------------------------------------------------------

async def _prepare(stack: Stack):
    from shomei.operations import run_ceremony
    from plumbing.runtime import open_runtime

    rt = await open_runtime(stack.config())
    await run_ceremony(rt)
    return rt


def _row(name, entries, r, ref):
    ratio = r["seconds"] / ref["seconds"] if ref else 1.0
    mem = r["rss_mb"] / ref["rss_mb"] if ref else 1.0
    return f"| {name:<44} | {entries:>10,} | {r['seconds']:>9.3f} | {ratio:>7.1f}x | {r['rss_mb']:>8.0f} | {mem:>6.1f}x |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--delta-changes", type=int, default=10_000)
    ap.add_argument("--skip-openssl-above", type=int, default=1_000_000)
    ap.add_argument("--skip-cryptography-above", type=int, default=1_000_000)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--json", metavar="FILE",
                    help="also write the figures there (default: benchmarks/results/crl.json)")
    args = ap.parse_args()
    if args.child:
        what, *rest = args.child
        {"shomei": child_shomei, "openssl": child_openssl, "cryptography": child_cryptography}[what](*rest)
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    lines = []
    with Stack() as stack:
        env = stack.env
        rt = asyncio.run(_prepare_and_close(stack))
        gen_id, partition_size = rt
        loaded = 0
        for size in sizes:
            workdir = stack.dir / f"n{size}"
            workdir.mkdir()
            t0 = time.perf_counter()
            asyncio.run(_db(stack, lambda conn: load(conn, gen_id=gen_id, start=ID_BASE + loaded,
                                                     count=size - loaded, partition_size=partition_size,
                                                     bulk=True)))
            asyncio.run(_db(stack, lambda conn: conn.execute("VACUUM ANALYZE revocation")))
            loaded = size
            print(f"loaded {size:,} revoked certificates in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

            results = {}
            results["shomei"] = run_child(env, "shomei", "base")
            results["shomei2"] = run_child(env, "shomei", "base")  # warm page cache: the steady state
            crl_path = Path(env["SHOMEI_VAR_DIR"]) / "crl" / results["shomei2"]["path"]
            _check(crl_path, size, stack)
            need_files = size <= max(args.skip_openssl_above, args.skip_cryptography_above)
            if need_files:
                make_openssl_ca(workdir)
                asyncio.run(_db(stack, lambda conn: export(conn, workdir)))
            if size <= args.skip_openssl_above:
                results["openssl"] = run_child(env, "openssl", str(workdir))
            if size <= args.skip_cryptography_above:
                results["cryptography"] = run_child(env, "cryptography", str(workdir))
            ref = results["shomei2"]
            lines.append(_row("shomei full CRL (cold: first run)", size, results["shomei"], ref))
            lines.append(_row("shomei full CRL (streamed, HSM-signed)", size, ref, ref))
            if "openssl" in results:
                lines.append(_row("openssl ca -gencrl", size, results["openssl"], ref))
            else:
                lines.append(f"| openssl ca -gencrl: skipped above {args.skip_openssl_above:,} entries")
            if "cryptography" in results:
                lines.append(_row("cryptography CertificateRevocationListBuilder", size, results["cryptography"], ref))
            else:
                lines.append(f"| cryptography builder: skipped above {args.skip_cryptography_above:,} entries")

        # a delta of N changes against the last base: new revocations committed after it
        n = args.delta_changes
        asyncio.run(_db(stack, lambda conn: load(conn, gen_id=gen_id, start=ID_BASE + loaded, count=n,
                                                 partition_size=partition_size)))
        d = run_child(env, "shomei", "delta")
        if d["entries"] != n:
            raise RuntimeError(f"delta has {d['entries']} entries, expected {n}")
        workdir = stack.dir / "delta"
        workdir.mkdir()
        make_openssl_ca(workdir)
        asyncio.run(_db(stack, lambda conn: export_delta(conn, workdir, ID_BASE + loaded)))
        o = run_child(env, "openssl", str(workdir))
        c = run_child(env, "cryptography", str(workdir))
        lines.append(_row("shomei delta CRL, fresh process", n, dict(d, seconds=d["cold_seconds"]), d))
        lines.append(_row("shomei delta CRL (changes since base, warm)", n, d, d))
        lines.append(_row("openssl ca -gencrl (same entries)", n, o, d))
        lines.append(_row("cryptography builder (same entries)", n, c, d))

    print()
    print(f"CRL benchmark ({os.cpu_count()} cores; times exclude interpreter start; peak RSS per process)")
    print(f"| {'contender':<44} | {'entries':>10} | {'seconds':>9} | {'vs shomei':>8} | {'peak MB':>8} | {'mem':>7} |")
    print(f"|{'-' * 46}|{'-' * 12}|{'-' * 11}|{'-' * 10}|{'-' * 10}|{'-' * 8}|")
    for line in lines:
        print(line)
    from benchmarks.charts import table_rows, write_results
    keys = ("contender", "entries", "seconds", "vs_shomei", "peak_mb", "mem_vs_shomei")  # the printed rows
    write_results(args.json, "crl", delta_changes=args.delta_changes, full=table_rows(lines[:-4], keys),
                  delta=table_rows(lines[-4:], keys))


async def _db(stack: Stack, fn):
    import asyncpg
    conn = await asyncpg.connect(stack.url)
    try:
        return await fn(conn)
    finally:
        await conn.close()


async def _prepare_and_close(stack: Stack):
    rt = await _prepare(stack)
    try:
        return rt.issuers.current("signing").db_id, rt.cfg.issuance.partition_size
    finally:
        await rt.close()


async def export_delta(conn, workdir: Path, after_id: int) -> None:
    """The delta's entries (certificates with ids above ``after_id``) for the other contenders."""
    (workdir / "index.txt.attr").write_text("unique_subject = no\n")
    with open(workdir / "index.txt", "wb") as f:
        await conn.copy_from_query(
            "SELECT 'R', '310101000000Z', '260102030405Z' || CASE reason WHEN 1 THEN ',keyCompromise'"
            " WHEN 3 THEN ',affiliationChanged' WHEN 5 THEN ',cessationOfOperation' ELSE '' END,"
            " upper(encode(serial, 'hex')), 'unknown', '/CN=bench' FROM revocation WHERE certificate_id > $1",
            after_id, output=f)
    with open(workdir / "entries.bin", "wb") as f:
        await conn.copy_from_query(
            "SELECT string_agg(serial || set_byte('\\x00'::bytea, 0, reason), ''::bytea) FROM revocation"
            " WHERE certificate_id > $1", after_id, output=_Strip(f), format="binary")


def _check(path: Path, size: int, stack: Stack) -> None:
    """The CRL parses strictly, has ``size`` entries and verifies against the CA certificate."""
    from cryptography import x509

    async def ca_der(conn):
        return await conn.fetchval("SELECT certificate FROM ca_generation WHERE ca_id = 'signing' AND is_current")

    ca = x509.load_der_x509_certificate(asyncio.run(_db(stack, ca_der)))
    crl = x509.load_der_x509_crl(path.read_bytes())
    if len(crl) != size or not crl.is_signature_valid(ca.public_key()):
        raise RuntimeError(f"bad CRL: {len(crl)} entries, expected {size}")
    print(f"checked {path.name}: {size:,} entries, signature valid", file=sys.stderr)


if __name__ == "__main__":
    main()
