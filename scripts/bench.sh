#!/usr/bin/env bash
# Issuer intake benchmark on both stores against a release build. Prints one line
# per store: pushes/s and p50/p99 latency. Usage: bash scripts/bench.sh [seconds] [clients]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-30}"
clients="${2:-32}"
bash scripts/services.sh >/dev/null
cargo build --release -p piaojia-gateway -p piaojia-tests --bin piaojia --bin piaojia-bench
for store in sqlite postgres; do
    target/release/piaojia-bench --store "$store" --seconds "$seconds" --clients "$clients"
done
