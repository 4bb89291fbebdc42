#!/usr/bin/env bash
# End-to-end delivery benchmark on both stores against a release build: receipts
# pushed at a fixed rate, timed from the 201 to the (simulated) WeChat send, with
# ~50 ms WeChat latency. Prints one line per store: receipts/s and p50/p99 latency.
# Usage: bash scripts/bench-delivery.sh [seconds] [rate] [extra piaojia-bench-delivery args]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-60}"
rate="${2:-1000}"
shift $(( $# < 2 ? $# : 2 ))
bash scripts/services.sh >/dev/null
cargo build --release -p piaojia-gateway -p piaojia-tests --bin piaojia --bin piaojia-bench-delivery
for store in postgres sqlite; do
    target/release/piaojia-bench-delivery --store "$store" --seconds "$seconds" --rate "$rate" "$@"
done
