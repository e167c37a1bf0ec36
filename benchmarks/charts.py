"""Charts of the benchmarks' figures, drawn from the JSON files they write (`--json`), as SVG for the README.

    .venv/bin/python -m benchmarks.charts [--results benchmarks/results] [--out docs/charts]

Reads whichever of issuance.json, ocsp.json, crl.json and table_size.json exist and skips, with a note,
a chart whose figures are missing. The output is deterministic (no date, fixed SVG ids): redrawing the
same figures leaves the files unchanged.

matplotlib is imported only when drawing: the benchmarks import write_results from here at their end,
and the CRL benchmark's contenders (child processes) must not carry it in their peak memory.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OUT = HERE.parent / "docs" / "charts"

STYLE = {
    "svg.hashsalt": "shomei-charts",  # fixed ids in the SVG
    "svg.fonttype": "none",  # text stays text: smaller files, searchable labels
    "font.size": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 8,
    "legend.framealpha": 0.9,
}


# -- the results files -----------------------------------------------------------------------------

def write_results(path: str | Path | None, name: str, **tables) -> Path:
    """Write one benchmark's figures: the command line, the date, the CPU count, then ``tables``
    (lists of row dicts and single figures). ``path`` None: benchmarks/results/<name>.json."""
    path = Path(path) if path else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"command": shlex.join(["python", "-m", f"benchmarks.bench_{name}", *sys.argv[1:]]),
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "cpu_count": os.cpu_count(), **tables}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"figures written to {path}")
    return path


def _number(text: str):
    """'1,000,000' -> 1000000, '0.600' -> 0.6, '14.2x' -> 14.2; anything else stays a string."""
    t = text.strip().replace(",", "").removesuffix("x")
    for kind in (int, float):
        try:
            return kind(t)
        except ValueError:
            pass
    return text.strip()


def table_rows(lines: list[str], keys: tuple[str, ...]) -> list[dict]:
    """The rows of a printed Markdown table ('| a | b |') with ``len(keys)`` cells, as dicts; other lines
    (notes such as '| openssl ca -gencrl: skipped above ...') are left out."""
    rows = []
    for line in lines:
        cells = line.strip().strip("|").split("|")
        if len(cells) == len(keys):
            rows.append(dict(zip(keys, map(_number, cells))))
    return rows


# -- drawing ---------------------------------------------------------------------------------------

def _mpl():
    """matplotlib, on the Agg backend with STYLE (imported here, not by the benchmarks' processes)."""
    import matplotlib
    import matplotlib.figure
    import matplotlib.ticker
    matplotlib.use("Agg")
    matplotlib.rcParams.update(STYLE)
    return matplotlib


def _human(v: float, _pos=None) -> str:
    """Tick labels: 1500 -> 1.5k, 10000000 -> 10M, 0.02 -> 0.02."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:g}{suffix}"
    return f"{v:g}"


def line_chart(ax, series, *, title: str, xlabel: str, ylabel: str, hlines=(), xscale: str = "linear",
               yscale: str = "linear", xticks=None, colour: int = 0) -> None:
    """Draw ``series`` [(label, xs, ys)] as lines with markers and ``hlines`` [(label, y)] as dashed or
    dotted horizontal lines on ``ax``, in colours C<colour>, C<colour + 1>, ... ``xticks``: (positions,
    labels), else every x of the series. The legend is the figure's, below the axes (_save)."""
    ticker = _mpl().ticker
    for i, (label, xs, ys) in enumerate(series, colour):
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None and (yscale != "log" or y > 0)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=f"C{i % 10}", label=label)
    for k, (label, y) in enumerate(hlines):
        ax.axhline(y, linestyle=(0, (5, 3)) if k % 2 == 0 else (0, (1, 2)),
                   color=f"C{(colour + len(series) + k) % 10}", linewidth=1.2, label=label)
    ax.set_xscale(xscale)
    ax.set_yscale(yscale)
    if xticks is None:
        xticks = sorted({x for _l, xs, _y in series for x in xs})
        xticks = (xticks, [_human(x) for x in xticks])
    ax.set_xticks(*xticks)
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(_human))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    if yscale == "linear":
        ax.set_ylim(bottom=0)
    else:  # 1, 2, 5, 10, 20, ...: labels even when the figures span less than a decade
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _figure(ncols: int = 1, width: float = 7.0, height: float = 4.2):
    fig = _mpl().figure.Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _save(fig, out: Path, name: str) -> Path:
    labels = {label for ax in fig.axes for label in ax.get_legend_handles_labels()[1]}
    fig.legend(loc="outside lower center", ncols=1 if max(map(len, labels), default=0) > 48 else 2)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    fig.savefig(path, format="svg", metadata={"Date": None})
    return path


def _group(rows: list[dict], key: str, x: str, y: str, label=str) -> list[tuple[str, list, list]]:
    """One series per distinct ``row[key]`` (in order of appearance), points sorted by x."""
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(r[key], []).append((r[x], r[y]))
    return [(label(k), *map(list, zip(*sorted(pts)))) for k, pts in groups.items()]


# -- the charts ------------------------------------------------------------------------------------

def chart_issuance(data: dict, out: Path) -> list[Path]:
    rows = ([dict(r, listener="mTLS") for r in data.get("mtls", [])]
            + [dict(r, listener="plain HTTP behind a TLS proxy") for r in data.get("plain", [])]
            + [dict(r, listener=f"batches of {data.get('batch_size')}, mTLS") for r in data.get("batch", [])])
    if not rows:
        raise LookupError("no rows")
    series = _group(rows, "listener", "concurrency", "certs_per_s", label=lambda k: f"shomei issuance, {k}")
    b, workers = data.get("baselines", {}), data.get("workers")
    hlines = [(label, b[key]) for key, label in (
        ("token_per_s", f"raw token signing, {workers} processes (signatures/s)"),
        ("cryptography_per_s", "pyca/cryptography CertificateBuilder, 1 process, key in memory"),
        ("openssl_x509_per_s", f"openssl x509 -req, {workers} in parallel, key in memory")) if key in b]
    fig, (ax,) = _figure(height=5.0)
    line_chart(ax, series, hlines=hlines, xscale="log",
               title=f"Issuance throughput, shomei serve --workers {workers} ({data.get('cpu_count')} cores)",
               xlabel="concurrent requests (a batch is one request)", ylabel="certificates/s")
    return [_save(fig, out, "issuance.svg")]


def chart_ocsp(data: dict, out: Path) -> list[Path]:
    rows = data.get("rows", [])
    if not rows:
        raise LookupError("no rows")
    series = _group(rows, "responder", "concurrency", "answers_per_s")
    hlines = ([(f"raw token signing, {data.get('token_processes')} processes (signatures/s)", data["token_per_s"])]
              if "token_per_s" in data else [])
    fig, (ax,) = _figure()
    line_chart(ax, series, hlines=hlines, xscale="log", yscale="log",
               title=f"OCSP answers, {data.get('cpu_count')} cores (log scale)",
               xlabel="concurrent connections", ylabel="answers/s")
    return [_save(fig, out, "ocsp.svg")]


def chart_crl(data: dict, out: Path) -> list[Path]:
    rows = data.get("full", []) + data.get("delta", [])
    if not rows:
        raise LookupError("no rows")
    paths = []
    for y, ylabel, yscale, title, name in (
            ("seconds", "seconds (log)", "log", "CRL generation time against entries", "crl_seconds.svg"),
            ("peak_mb", "peak resident memory, MB", "linear", "CRL generation peak memory against entries",
             "crl_memory.svg")):
        fig, (ax,) = _figure(height=4.8)
        line_chart(ax, _group(rows, "contender", "entries", y), xscale="log", yscale=yscale, title=title,
                   xlabel="entries in the CRL (log)", ylabel=ylabel)
        paths.append(_save(fig, out, name))
    return paths


TABLE_SIZE = (("issuance_per_s", "issuance", "certificates/s"),
              ("ocsp_miss_per_s", "OCSP misses", "answers/s"),
              ("delta_crl_s", "delta CRL", "seconds"))


def chart_table_size(data: dict, out: Path) -> list[Path]:
    rows = sorted(data.get("rows", []), key=lambda r: r["table_rows"])
    if not rows:
        raise LookupError("no rows")
    xs = list(range(len(rows)))
    ticks = (xs, [_human(r["table_rows"]) for r in rows])
    fig, axes = _figure(ncols=len(TABLE_SIZE), width=10.5, height=3.8)
    for i, (ax, (key, label, unit)) in enumerate(zip(axes, TABLE_SIZE)):
        line_chart(ax, [(f"{label}, {unit}", xs, [r.get(key) for r in rows])], xticks=ticks, colour=i,
                   title=label, xlabel="rows in the certificate table", ylabel=unit)
    fig.suptitle("shomei against the size of the certificate table")
    return [_save(fig, out, "table_size.svg")]


CHARTS = (("issuance.json", chart_issuance), ("ocsp.json", chart_ocsp), ("crl.json", chart_crl),
          ("table_size.json", chart_table_size))


def draw_all(results: Path = RESULTS, out: Path = OUT, note=print) -> list[Path]:
    """Every chart whose JSON exists in ``results``, into ``out``; the others are skipped with a note."""
    written = []
    for name, chart in CHARTS:
        path = Path(results) / name
        if not path.exists():
            note(f"skipped {chart.__name__}: {path} not found (run its benchmark)")
            continue
        try:
            written += chart(json.loads(path.read_text()), Path(out))
        except LookupError as exc:  # KeyError included: a figure the chart needs is not in the file
            note(f"skipped {chart.__name__}: {path} lacks figures ({exc!r})")
    for p in written:
        note(f"wrote {p}")
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of the benchmarks' JSON files")
    ap.add_argument("--out", type=Path, default=OUT, help="folder of the SVG charts")
    args = ap.parse_args(argv)
    draw_all(args.results, args.out)


if __name__ == "__main__":
    main()
