#!/usr/bin/env bash
# Runs `sagactl bench` against a local release stack (`sagactl dev --sagas-only`: no
# event consumers, no bank): concurrency 1, 16
# and 64 with one worker, then 1, 2 and 3 workers at concurrency 64. Prints, per run,
# throughput, latency, durable JetStream writes per saga, the server's raw fsynced
# append rate measured in the same run and the bound it gives, and CPU ms per saga of
# every process; docs/benchmarks.md records the figures.
#   SAGAS=1000 scripts/bench.sh              # also rewrites the "Latest make bench" table
#   BENCH_DOC= scripts/bench.sh               # print the table, change no file
#   BENCH_RESULTS=/tmp/runs.jsonl scripts/bench.sh   # also keep every run's JSON report (CPU per process)
#   DEV_ARGS="--otel http://127.0.0.1:4317" CONCURRENCY=16 WORKERS= scripts/bench.sh   # traces exported
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="${BIN:-target/release}"
sagas="${SAGAS:-1000}"
nats_port="${NATS_PORT:-4334}"
grpc="127.0.0.1:${GRPC_PORT:-50071}"
bank="127.0.0.1:${BANK_PORT:-50072}"
orders="127.0.0.1:${ORDERS_PORT:-50073}"

run() { # workers concurrency
    local workers="$1" concurrency="$2" dir
    dir="$(mktemp -d)"
    "${bin}/sagactl" dev --workers "${workers}" --nats-port "${nats_port}" --grpc-addr "${grpc}" \
        --sagas-only --bank-addr "${bank}" --orders-addr "${orders}" --data-dir "${dir}" ${DEV_ARGS:-} >"${dir}/dev.out" 2>&1 &
    local dev=$!
    for _ in $(seq 1 300); do
        grep -q "grpcurl" "${dir}/dev.out" 2>/dev/null && break
        kill -0 "${dev}" 2>/dev/null || { cat "${dir}/dev.out"; exit 1; }
        sleep 0.2
    done
    # Let the workers settle their partitions (even shares) before measuring.
    for _ in $(seq 1 150); do
        NATS_URL="nats://127.0.0.1:${nats_port}" "${bin}/sagactl" --json cluster 2>/dev/null \
            | python3 -c '
import json, sys
c = json.load(sys.stdin)
shares = [len(w["partitions"]) for w in c["workers"]]
owned = all(p["owner"] for p in c["partitionLag"])
sys.exit(0 if len(shares) == int(sys.argv[1]) and owned and max(shares) - min(shares) <= 1 else 1)
' "${workers}" && break
        sleep 0.2
    done
    printf 'workers=%s concurrency=%s:\n' "${workers}" "${concurrency}"
    "${bin}/sagactl" --json --gateway "http://${grpc}" bench --sagas "${sagas}" --concurrency "${concurrency}" \
        --nats-url "nats://127.0.0.1:${nats_port}" --raw --dev-data-dir "${dir}" 2>/dev/null \
        | python3 -c '
import json, sys
r = json.load(sys.stdin)
r["workers"] = int(sys.argv[1])
with open(sys.argv[2], "a") as f:
    f.write(json.dumps(r) + "\n")
l = r["latencyMs"]
print("    %.1f sagas/s, p50 %.1f ms, p99 %.1f ms, %.2f writes/saga, raw %.0f/s, bound %.1f sagas/s, cpu %.2f ms/saga, %s"
      % (r["sagasPerSec"], l["p50"], l["p99"], r["durableWritesPerSaga"] or 0, r["rawAppendsPerSec"] or 0,
         r["brokerBoundSagasPerSec"] or 0, sum(r["cpuMsPerSaga"].values()), r["states"]))
' "${workers}" "${results}"
    kill -TERM "${dev}"
    wait "${dev}" || true
    rm -rf "${dir}"
}

results="${BENCH_RESULTS:-$(mktemp)}"
for c in ${CONCURRENCY-1 16 64}; do run 1 "${c}"; done
for w in ${WORKERS-2 3}; do run "${w}" 64; done

# The table, between the markers of docs/benchmarks.md (BENCH_DOC= to only print it).
doc="${BENCH_DOC-docs/benchmarks.md}"
python3 scripts/bench_table.py "${results}" "${sagas}" "${doc}"
[ -n "${BENCH_RESULTS:-}" ] || rm -f "${results}"
