"""benchmarks/charts.py: each chart from a small results file of the shape the benchmarks write, as SVG
that parses and names its series; a missing file is a note, not an error; redrawing changes nothing."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from benchmarks import charts
from benchmarks.bench_crl import _row


def _rows(keys, *values):
    return [dict(zip(keys, v)) for v in values]


ISSUANCE_KEYS = ("concurrency", "certs_per_s", "p50_ms", "p99_ms", "errors")
OCSP_KEYS = ("responder", "concurrency", "answers_per_s", "p50_ms", "p99_ms", "non2xx", "socket_errors")
CRL_KEYS = ("contender", "entries", "seconds", "vs_shomei", "peak_mb", "mem_vs_shomei")

SAMPLES = {
    "issuance.json": {
        "command": "python -m benchmarks.bench_issuance", "date": "2026-11-23T00:00:00+00:00", "cpu_count": 2,
        "workers": 2, "requests": 2000,
        "mtls": _rows(ISSUANCE_KEYS, (8, 922.0, 16.9, 30.3, 0), (16, 801.0, 38.9, 74.2, 0)),
        "plain": _rows(ISSUANCE_KEYS, (8, 941.0, 18.0, 31.0, 0), (16, 981.0, 32.1, 60.2, 0)),
        "baselines": {"token_1_process_per_s": 1900.0, "token_per_s": 3641.0, "openssl_x509_per_s": 85.0,
                      "cryptography_per_s": 3550.0, "openssl_speed_rsa2048_per_s": 4450.0},
        "server_peak_rss_mb": 250.0,
    },
    "ocsp.json": {
        "command": "python -m benchmarks.bench_ocsp", "date": "2026-11-23T00:00:00+00:00", "cpu_count": 2,
        "workers": 2, "seconds": 8, "certs": 3000, "token_per_s": 3760.0, "token_processes": 2,
        "rows": _rows(OCSP_KEYS, ("shomei cached GET", 16, 35313.0, 0.39, 4.2, 0, ""),
                      ("shomei cached GET", 64, 40023.0, 1.4, 5.1, 0, ""),
                      ("shomei miss (nonce)", 16, 2100.0, 7.0, 20.0, 0, ""),
                      ("shomei miss (nonce)", 64, 2337.0, 27.7, 45.0, 0, ""),
                      ("openssl ocsp -multi 2", 16, 3300.0, 5.0, 10.0, 0, ""),
                      ("openssl ocsp -multi 2", 64, 3453.0, 18.2, 29.2, 0, "")),
        "peak_rss_mb": {"shomei_workers": 171.0, "openssl_ocsp": 20.0},
    },
    "crl.json": {
        "command": "python -m benchmarks.bench_crl", "date": "2026-11-23T00:00:00+00:00", "cpu_count": 2,
        "delta_changes": 10000,
        "full": _rows(CRL_KEYS, ("shomei full CRL (streamed, HSM-signed)", 1000000, 0.6, 1.0, 78, 1.0),
                      ("openssl ca -gencrl", 1000000, 14.2, 23.7, 571, 7.3),
                      ("cryptography CertificateRevocationListBuilder", 1000000, 18.3, 30.5, 414, 5.3),
                      ("shomei full CRL (streamed, HSM-signed)", 10000000, 5.7, 1.0, 83, 1.0)),
        "delta": _rows(CRL_KEYS, ("shomei delta CRL (changes since base, warm)", 10000, 0.02, 1.0, 53, 1.0),
                       ("openssl ca -gencrl (same entries)", 10000, 0.099, 5.0, 12, 0.2)),
    },
    "table_size.json": {
        "rows": [{"table_rows": 0, "issuance_per_s": 950.0, "ocsp_miss_per_s": 2400.0, "delta_crl_s": 0.015},
                 {"table_rows": 10000000, "issuance_per_s": 900.0, "ocsp_miss_per_s": 2300.0, "delta_crl_s": 0.021},
                 {"table_rows": 1000000, "issuance_per_s": 930.0, "ocsp_miss_per_s": 2350.0, "delta_crl_s": 0.018}],
    },
}

LABELS = {
    "issuance.svg": ["shomei issuance, mTLS", "shomei issuance, plain HTTP behind a TLS proxy",
                     "raw token signing, 2 processes (signatures/s)", "openssl x509 -req, 2 in parallel",
                     "pyca/cryptography CertificateBuilder"],
    "ocsp.svg": ["shomei cached GET", "shomei miss (nonce)", "openssl ocsp -multi 2", "raw token signing"],
    "crl_seconds.svg": ["shomei full CRL (streamed, HSM-signed)", "openssl ca -gencrl",
                        "cryptography CertificateRevocationListBuilder", "shomei delta CRL (changes since base, warm)"],
    "crl_memory.svg": ["shomei full CRL (streamed, HSM-signed)", "openssl ca -gencrl (same entries)",
                       "peak resident memory, MB"],
    "table_size.svg": ["issuance, certificates/s", "OCSP misses, answers/s", "delta CRL, seconds", "10M"],
}


def _write(folder, names=SAMPLES):
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_text(json.dumps(SAMPLES[name]))


def _texts(path) -> str:
    root = ET.parse(path).getroot()  # raises if the SVG is not well-formed XML
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return "\n".join(t for el in root.iter() for t in (el.text, el.tail) if t)


def test_every_chart_is_svg_with_its_series(tmp_path):
    _write(tmp_path / "results")
    notes = []
    written = charts.draw_all(tmp_path / "results", tmp_path / "out", note=notes.append)
    assert sorted(p.name for p in written) == sorted(LABELS)
    for name, labels in LABELS.items():
        text = _texts(tmp_path / "out" / name)
        for label in labels:
            assert label in text, (name, label)
    assert not [n for n in notes if n.startswith("skipped")]


def test_missing_results_are_skipped_with_a_note(tmp_path):
    _write(tmp_path / "results", ["ocsp.json"])
    notes = []
    written = charts.draw_all(tmp_path / "results", tmp_path / "out", note=notes.append)
    assert [p.name for p in written] == ["ocsp.svg"]
    skipped = [n for n in notes if n.startswith("skipped")]
    assert len(skipped) == 3 and any("table_size.json" in n for n in skipped)
    assert charts.draw_all(tmp_path / "nothing", tmp_path / "out2", note=notes.append) == []
    assert not (tmp_path / "out2").exists()


def test_a_results_file_without_its_figures_is_skipped(tmp_path):
    (tmp_path / "crl.json").write_text(json.dumps({"command": "x", "full": [], "delta": []}))
    (tmp_path / "issuance.json").write_text(json.dumps({"mtls": [{"concurrency": 8}]}))
    notes = []
    assert charts.draw_all(tmp_path, tmp_path / "out", note=notes.append) == []
    assert any("chart_crl" in n and "lacks figures" in n for n in notes)
    assert any("chart_issuance" in n and "lacks figures" in n for n in notes)


def test_redrawing_the_same_figures_changes_nothing(tmp_path):
    _write(tmp_path / "results")
    first = {p.name: p.read_bytes() for p in charts.draw_all(tmp_path / "results", tmp_path / "a", note=print)}
    second = {p.name: p.read_bytes() for p in charts.draw_all(tmp_path / "results", tmp_path / "b", note=print)}
    assert first == second
    assert b"<dc:date>" not in first["ocsp.svg"]


def test_crl_rows_are_read_back_from_the_printed_table():
    lines = [_row("openssl ca -gencrl", 1_000_000, {"seconds": 14.2, "rss_mb": 571.4}, {"seconds": 0.6, "rss_mb": 78}),
             "| openssl ca -gencrl: skipped above 1,000,000 entries"]
    assert charts.table_rows(lines, CRL_KEYS) == [
        {"contender": "openssl ca -gencrl", "entries": 1_000_000, "seconds": 14.2, "vs_shomei": 23.7,
         "peak_mb": 571, "mem_vs_shomei": 7.3}]


def test_write_results_defaults_and_header(tmp_path, monkeypatch):
    monkeypatch.setattr(charts, "RESULTS", tmp_path / "results")
    monkeypatch.setattr("sys.argv", ["bench_crl.py", "--sizes", "10000"])
    path = charts.write_results(None, "crl", full=[{"entries": 1}])
    assert path == tmp_path / "results" / "crl.json"
    doc = json.loads(path.read_text())
    assert doc["command"] == "python -m benchmarks.bench_crl --sizes 10000"
    assert doc["cpu_count"] >= 1 and doc["date"].endswith("+00:00") and doc["full"] == [{"entries": 1}]
