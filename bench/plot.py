#!/usr/bin/env python3
"""Bar charts of attend_bench results: throughput per shape, one bar per implementation.

    attend_bench --benchmark_out=run.json --benchmark_out_format=json [--benchmark_repetitions=3]
    /usr/bin/python3 bench/plot.py run.json -o run.png [--peers openblas.log[:label] ...] \
        [--threads 1]

Reads Google Benchmark JSON (several files are compared side by side, each implementation
suffixed with its file's name) and draws one panel per kernel and unit: GFLOP/s from the
FLOPS counter, or GB/s from bytes_per_second for the memory-bound ones (softmax, decode).
With repetitions, the median aggregate is plotted; --threads keeps one thread count.
--peers adds the `RESULT peer=...` lines printed by the programs of shared/peers:
attention at their shapes, decode shapes (D1, D2) as Decode, PR1 and GEMM4096 as Linear.
Needs matplotlib (Debian: python3-matplotlib, for /usr/bin/python3).
"""
import argparse
import collections
import json
import os
import re
import sys

try:
    import matplotlib
except ImportError:
    sys.exit("plot.py needs matplotlib: apt-get install python3-matplotlib, run with /usr/bin/python3")
matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

# BM_<Kernel>_<Variant>/<shape>/isa:<isa>/threads:<n>[/min_time:...][/real_time]
NAME = re.compile(r"^BM_(?P<kernel>[A-Za-z0-9]+)_(?P<variant>[A-Za-z0-9]+)/(?P<shape>[^/]+)"
                  r"/isa:(?P<isa>[^/]+)/threads:(?P<threads>\d+)")


def load_benchmarks(path, suffix, threads):
    """[(kernel, unit, shape, implementation, value)] from one benchmark JSON file."""
    with open(path) as f:
        runs = json.load(f)["benchmarks"]
    has_median = any(r.get("aggregate_name") == "median" for r in runs)
    rows = []
    for r in runs:
        if r.get("error_occurred"):
            continue
        if has_median and r.get("aggregate_name") != "median":
            continue
        if not has_median and r.get("run_type", "iteration") != "iteration":
            continue
        m = NAME.match(r.get("run_name", r["name"]))
        if not m or (threads and m["threads"] != threads):
            continue
        impl = f"{m['variant']} ({m['isa']}, {m['threads']}t){suffix}"
        if "bytes_per_second" in r:
            rows.append((m["kernel"], "GB/s", m["shape"], impl, r["bytes_per_second"] / 1e9))
        elif "FLOPS" in r:
            rows.append((m["kernel"], "GFLOP/s", m["shape"], impl, r["FLOPS"] / 1e9))
    return rows


def load_peers(path, label, threads):
    """Rows from peer RESULT lines: attention shapes, decode shapes in GB/s as Decode (beside
    attend's caches), and the GEMMs (PR1, GEMM4096) as Linear.
    The machine limits (PEAK, BW) are not implementations and are left out."""
    rows = []
    with open(path) as f:
        for line in f:
            if not line.startswith("RESULT "):
                continue
            fields = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
            shape = fields["shape"].upper()
            if shape in ("PEAK", "BW") or (threads and fields.get("threads") != threads):
                continue
            impl = f"peer {fields['peer']} ({fields.get('threads', '?')}t){label}"
            gbs = float(fields.get("gbs", 0))
            if shape in ("PR1", "GEMM4096"):
                rows.append(("Linear", "GFLOP/s", shape, impl, float(fields["gflops"])))
            elif gbs > 0:
                rows.append(("Decode", "GB/s", shape, impl, gbs))
            else:
                rows.append(("Attention", "GFLOP/s", shape, impl, float(fields["gflops"])))
    return rows


def plot(rows, out):
    panels = collections.OrderedDict()  # (kernel, unit) -> {shape: {impl: value}}
    for kernel, unit, shape, impl, value in rows:
        panels.setdefault((kernel, unit), collections.OrderedDict()).setdefault(shape, {})[impl] = value
    if not panels:
        sys.exit("plot.py: no benchmark with a FLOPS or bytes_per_second figure found")
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), squeeze=False)
    for ax, ((kernel, unit), shapes) in zip(axes[:, 0], panels.items()):
        impls = list(dict.fromkeys(i for values in shapes.values() for i in values))
        width = 0.8 / len(impls)
        for n, impl in enumerate(impls):
            # Only the shapes this implementation ran: no zero-height bars for the others.
            at = [(x, values[impl]) for x, values in enumerate(shapes.values()) if impl in values]
            xs = [x + (n - (len(impls) - 1) / 2) * width for x, _ in at]
            bars = ax.bar(xs, [y for _, y in at], width, label=impl)
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_xticks(range(len(shapes)), list(shapes))
        ax.set_title(kernel)
        ax.set_ylabel(unit)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="Google Benchmark JSON output")
    parser.add_argument("-o", "--output", default="attend_bench.png", help="PNG to write")
    parser.add_argument("--peers", action="append", default=[], metavar="LOG[:LABEL]",
                        help="output of a shared/peers program (RESULT lines); repeatable, "
                        "LABEL tells apart runs of the same peer")
    parser.add_argument("--threads", metavar="N", help="plot only the runs on N threads")
    args = parser.parse_args()
    rows = []
    for path in args.json:
        suffix = f" [{os.path.splitext(os.path.basename(path))[0]}]" if len(args.json) > 1 else ""
        rows += load_benchmarks(path, suffix, args.threads)
    for spec in args.peers:
        path, _, label = spec.partition(":")
        rows += load_peers(path, f" [{label}]" if label else "", args.threads)
    plot(rows, args.output)


if __name__ == "__main__":
    main()
