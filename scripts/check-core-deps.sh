#!/usr/bin/env bash
# saga-core is the pure model: no async runtime, actor system, broker client,
# storage engine or Protobuf/gRPC crate may enter its dependency tree.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
forbidden='^(tokio|ractor|async-nats|sled|tonic|prost|prost-types|futures)$'
tree="$(cargo tree -p saga-core -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)"
bad="$(grep -E "${forbidden}" <<<"${tree}" || true)"
if [[ -n "${bad}" ]]; then
    echo "saga-core must not depend on: ${bad//$'\n'/, }" >&2
    cargo tree -p saga-core -e normal -i "$(head -1 <<<"${bad}")" >&2 || true
    exit 1
fi
echo "saga-core dependency tree is free of I/O crates ($(wc -l <<<"${tree}") crates)"
