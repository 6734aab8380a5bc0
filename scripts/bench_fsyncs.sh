#!/usr/bin/env bash
# Counts the fsyncs of nats-server per saga during one `sagactl bench` (closed loop,
# no --raw phase, so only the sagas' own writes are counted), with `perf stat` attached
# to the server's process. Prints one JSON line: throughput, latency, writes and
# removals per saga, fsyncs per saga on nats-server and on the whole machine, CPU ms per
# saga by process. Needs `perf` (Debian: linux-perf) and root (or
# kernel.perf_event_paranoid <= 0).
#   scripts/bench_fsyncs.sh                         # target/release, 1000 sagas, C=64, 1 worker
#   BIN=/tmp/old SAGAS=1000 CONCURRENCY=64 WORKERS=1 scripts/bench_fsyncs.sh
# Interleave two builds (old, new, old, new) to compare them on these noisy machines.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="${BIN:-target/release}"
sagas="${SAGAS:-1000}"
concurrency="${CONCURRENCY:-64}"
workers="${WORKERS:-1}"
nats_port="${NATS_PORT:-4334}"
grpc="127.0.0.1:${GRPC_PORT:-50071}"
command -v perf >/dev/null || { echo "perf not found (apt-get install linux-perf)" >&2; exit 1; }
dir="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    [ -n "${dev:-}" ] && { kill -TERM "${dev}" 2>/dev/null || true; wait "${dev}" 2>/dev/null || true; }
    rm -rf "${dir}"
}
trap cleanup EXIT
"${bin}/sagactl" dev --workers "${workers}" --nats-port "${nats_port}" --grpc-addr "${grpc}" \
    --sagas-only --bank-addr "127.0.0.1:${BANK_PORT:-50072}" --orders-addr "127.0.0.1:${ORDERS_PORT:-50073}" \
    --data-dir "${dir}" >"${dir}/dev.out" 2>&1 &
dev=$!
for _ in $(seq 1 300); do
    grep -q grpcurl "${dir}/dev.out" 2>/dev/null && break
    kill -0 "${dev}" 2>/dev/null || { cat "${dir}/dev.out" >&2; exit 1; }
    sleep 0.2
done
# The workers take their partitions: wait until every one is owned.
for _ in $(seq 1 150); do
    NATS_URL="nats://127.0.0.1:${nats_port}" "${bin}/sagactl" --json cluster 2>/dev/null \
        | python3 -c 'import json, sys; sys.exit(0 if all(p["owner"] for p in json.load(sys.stdin)["partitionLag"]) else 1)' \
        && break
    sleep 0.2
done
nats_pid="$(pgrep -f "nats-server.*-p ${nats_port}" | head -1)"
events=syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync
perf stat -x, -e "${events}" -p "${nats_pid}" -o "${dir}/perf.nats" & pids+=($!)
perf stat -x, -a -e "${events}" -o "${dir}/perf.all" & pids+=($!)
sleep 0.5
"${bin}/sagactl" --json --gateway "http://${grpc}" bench --sagas "${sagas}" --concurrency "${concurrency}" \
    --nats-url "nats://127.0.0.1:${nats_port}" --dev-data-dir "${dir}" 2>/dev/null >"${dir}/bench.json"
for p in "${pids[@]}"; do kill -INT "$p"; wait "$p" || true; done
pids=()
python3 - "${dir}" "${sagas}" "${bin}" "${workers}" "${concurrency}" <<'PY'
import json, sys
d, n = sys.argv[1], int(sys.argv[2])
def count(path):
    total = 0
    for line in open(path):
        fields = line.split(",")
        if len(fields) > 2 and fields[0].strip().isdigit():
            total += int(fields[0])
    return total
r = json.load(open(d + "/bench.json"))
l = r["latencyMs"]
print(json.dumps({
    "bin": sys.argv[3], "workers": int(sys.argv[4]), "concurrency": int(sys.argv[5]),
    "sagasPerSec": round(r["sagasPerSec"], 1), "p50Ms": l["p50"], "p99Ms": l["p99"], "maxMs": l["max"],
    "writesPerSaga": r.get("durableWritesPerSaga"), "removalsPerSaga": r.get("removalsPerSaga"),
    "natsFsyncsPerSaga": round(count(d + "/perf.nats") / n, 2),
    "allFsyncsPerSaga": round(count(d + "/perf.all") / n, 2),
    "cpuMsPerSaga": {k: round(v, 2) for k, v in r["cpuMsPerSaga"].items()},
    "states": r["states"],
}))
PY
