#!/usr/bin/env bash
# Instructions one process of the stack executes per saga, counted by valgrind's
# callgrind: repeatable within a few percent where CPU times on a shared machine are not.
# Runs the release stack (`sagactl dev --sagas-only`, one worker) twice with PROCESS
# under callgrind, for BASE then SAGAS checkout sagas at concurrency 8, and prints
# (instructions of the second run - of the first) / (SAGAS - BASE): startup and idle
# work cancel out.
#   scripts/callgrind_worker.sh                       # the worker, 1000 - 200 sagas
#   BIN=/tmp/before scripts/callgrind_worker.sh       # another build's binaries
#   PROCESS=saga-gateway SAGAS=600 scripts/callgrind_worker.sh
# Needs valgrind (Debian: apt-get install valgrind). Each run leaves its profile in
# target/callgrind/ (callgrind_annotate --inclusive=yes FILE | head -40 to read it).
# The gateway's count moves with timing (it follows the journal in batches), so compare
# the worker's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
bin="$(cd "${BIN:-target/release}" && pwd)"
process="${PROCESS:-saga-worker}"
sagas="${SAGAS:-1000}"
base="${BASE:-200}"
nats_port="${NATS_PORT:-4334}"
grpc="127.0.0.1:${GRPC_PORT:-50071}"
out_dir="$PWD/target/callgrind"
mkdir -p "${out_dir}"
export PATH="$PWD/.tools/bin:$PATH"

# A copy of the binaries in which PROCESS starts under callgrind (sagactl dev runs the
# binaries next to itself).
wrapped="$(mktemp -d)"
trap 'rm -rf "${wrapped}"' EXIT
cp "${bin}"/* "${wrapped}/" 2>/dev/null || true
mv "${wrapped}/${process}" "${wrapped}/${process}.real"

count() { # sagas -> total instructions of PROCESS
    local n="$1" dir dev out
    out="${out_dir}/${process}-${n}"
    rm -f "${out}".*
    printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s.%%p %s "$@"\n' \
        "${out}" "${wrapped}/${process}.real" >"${wrapped}/${process}"
    chmod +x "${wrapped}/${process}"
    dir="$(mktemp -d)"
    "${wrapped}/sagactl" dev --workers 1 --nats-port "${nats_port}" --grpc-addr "${grpc}" --sagas-only \
        --bank-addr "127.0.0.1:${BANK_PORT:-50072}" --orders-addr "127.0.0.1:${ORDERS_PORT:-50073}" \
        --data-dir "${dir}" >"${dir}/dev.out" 2>&1 &
    dev=$!
    for _ in $(seq 1 600); do
        grep -q "grpcurl" "${dir}/dev.out" 2>/dev/null && break
        kill -0 "${dev}" 2>/dev/null || { cat "${dir}/dev.out" >&2; exit 1; }
        sleep 0.2
    done
    for _ in $(seq 1 300); do
        NATS_URL="nats://127.0.0.1:${nats_port}" "${wrapped}/sagactl" --json cluster 2>/dev/null \
            | python3 -c 'import json, sys; c = json.load(sys.stdin); sys.exit(0 if c["workers"] and all(p["owner"] for p in c["partitionLag"]) else 1)' \
            && break
        sleep 0.5
    done
    "${wrapped}/sagactl" --gateway "http://${grpc}" bench --sagas "${n}" --concurrency 8 >"${dir}/bench.out" 2>&1 \
        || { cat "${dir}/bench.out" >&2; kill -TERM "${dev}"; exit 1; }
    kill -TERM "${dev}"
    wait "${dev}" || true
    rm -rf "${dir}"
    # One profile per process started (the worker is not restarted in a clean run).
    cat "${out}".* | awk '/^summary:/ { s += $2 } END { print s }'
}

first="$(count "${base}")"
second="$(count "${sagas}")"
python3 -c '
import sys
a, b, n, m, p = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
print("%s: %.2f M instructions per saga (%d sagas: %d, %d sagas: %d)" % (p, (b - a) / (m - n) / 1e6, n, a, m, b))
' "${first}" "${second}" "${base}" "${sagas}" "${process}"
