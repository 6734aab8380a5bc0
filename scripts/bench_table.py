#!/usr/bin/env python3
"""Renders the runs of scripts/bench.sh (one JSON object per line, from `sagactl --json
bench`) as a Markdown table with the machine, versions and durability, and puts it
between the `<!-- bench:begin -->` and `<!-- bench:end -->` markers of a document (or
prints it when no document is given)."""
import json
import os
import platform
import subprocess
import sys
import time


def run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "?"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def table(results_path, sagas):
    runs = [json.loads(l) for l in open(results_path) if l.strip()]
    nats = run([".tools/bin/nats-server", "--version"]) or "?"
    build = "release build" if "release" in os.environ.get("BIN", "target/release") else "debug build"
    lines = [
        "<!-- bench:begin -->",
        "## Latest `make bench` (written by scripts/bench.sh)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit "
        f"{run(['git', 'rev-parse', '--short', 'HEAD'])}; {os.cpu_count()} cores ({cpu_model()}), "
        f"{platform.system()} {platform.release()}; {nats}, {run(['rustc', '--version'])}, {build}. "
        "Durability: JetStream `sync_interval: always` (every stored message fsynced, "
        "nats.conf); participants flush sled before every reply. Every process on the same machine; "
        f"{sagas} checkout sagas per run, closed loop. *writes/saga*: JetStream messages "
        "stored per saga over every stream (KV included); *raw*: the server's fsynced "
        "append rate measured in the same run (256 in flight); *bound*: raw / writes; "
        "*removals/saga*: messages that left a stream per saga (trimmed from SAGA_INBOX and "
        "SAGA_COMMANDS in ranges, about one fsync per purge; the open-saga entry purged; KV "
        "revisions replaced); on a work queue each would be one more fsync. Fsyncs counted on "
        "the server: scripts/bench_fsyncs.sh.",
        "",
        "| workers | concurrency | sagas/s | p50 ms | p99 ms | writes/saga | removals/saga | raw appends/s | bound sagas/s | % of bound | CPU ms/saga (all processes) | worker CPU ms/saga |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        l = r["latencyMs"]
        cpu = r.get("cpuMsPerSaga") or {}
        worker = sum(v for k, v in cpu.items() if k.startswith("saga-worker"))
        bound = r.get("brokerBoundSagasPerSec") or 0
        pct = f"{r['sagasPerSec'] / bound * 100:.0f} %" if bound else "-"
        lines.append(
            f"| {r['workers']} | {r['concurrency']} | {r['sagasPerSec']:.1f} | {l['p50']:.1f} | "
            f"{l['p99']:.1f} | {r.get('durableWritesPerSaga') or 0:.2f} | "
            f"{r.get('removalsPerSaga') or 0:.2f} | {r.get('rawAppendsPerSec') or 0:.0f} | {bound:.1f} | {pct} | "
            f"{sum(cpu.values()):.2f} | {worker:.2f} |"
        )
    if runs:
        by = runs[0].get("durableWritesByStream") or {}
        lines += [
            "",
            "Writes per saga by stream (first run): "
            + ", ".join(f"{k} {v:.2f}" for k, v in sorted(by.items())),
        ]
        gone = runs[0].get("removalsByStream") or {}
        if gone:
            lines += [
                "",
                "Removals per saga by stream (first run): "
                + ", ".join(f"{k} {v:.2f}" for k, v in sorted(gone.items())),
            ]
    lines.append("<!-- bench:end -->")
    return "\n".join(lines) + "\n"


def main():
    results, sagas = sys.argv[1], sys.argv[2]
    doc = sys.argv[3] if len(sys.argv) > 3 else ""
    text = table(results, sagas)
    print(text)
    if not doc:
        return
    with open(doc) as f:
        old = f.read()
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->\n"
    if begin in old and end in old:
        new = old[: old.index(begin)] + text + old[old.index(end) + len(end):]
    else:
        # After the title and its paragraph.
        head, _, rest = old.partition("\n## ")
        new = head.rstrip("\n") + "\n\n" + text + "\n## " + rest if rest else old + "\n" + text
    with open(doc, "w") as f:
        f.write(new)
    print(f"bench: table written to {doc}")


if __name__ == "__main__":
    main()
