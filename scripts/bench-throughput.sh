#!/usr/bin/env bash
# Throughput against the ceiling measured in the same run (issue #11).
#
#   bash scripts/bench-throughput.sh [seconds]
#
# 1. The reference: pgbench running scripts/bench/reference.sql (a receipt-shaped
#    durable transaction, 16 clients, prepared), without and with TLS.
# 2. piaojia-bench-delivery on SQLite, PostgreSQL + Redis without TLS
#    (sslmode=disable) and with TLS (sslmode=require), WeChat answering at once
#    and after 50 ms:
#    - closed loop: 64 pushes in flight, as fast as they are answered;
#    - open loop at 0.15 x and 0.3 x the reference tps.
# Prints one table: delivered receipts/s and its ratio to the reference, server
# CPU-ms per delivered receipt (piaojia + its PostgreSQL backends + Redis) and
# its ratio to the reference's CPU-ms per transaction, the machine's idle share,
# p50/p99 from push to WeChat, and push p99. Nothing lost or duplicated, or the
# run fails. The machine is shared and its speed moves between days: read the
# ratios, not the absolute figures.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-20}"
bash scripts/services.sh >/dev/null
# PIAOJIA_BENCH_BIN_DIR: a directory holding prebuilt `piaojia` and
# `piaojia-bench-delivery` (e.g. to compare two builds in one sitting).
bin_dir="${PIAOJIA_BENCH_BIN_DIR:-target/release}"
if [ -z "${PIAOJIA_BENCH_BIN_DIR:-}" ]; then
    cargo build --release -q -p piaojia-gateway -p piaojia-tests --bin piaojia --bin piaojia-bench-delivery
fi

ref_plain=$(bash scripts/bench-reference.sh 15 16 "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
ref_tls=$(bash scripts/bench-reference.sh 15 16 "postgres://postgres@127.0.0.1:5432/test?sslmode=require")
echo "$ref_plain"
echo "$ref_tls"
field() { sed -n "s/.* $1=\([^ %]*\).*/\1/p" <<<"$2"; }
tps_plain=$(field tps "$ref_plain"); cpu_plain=$(field cpu_ms_per_tx "$ref_plain")
tps_tls=$(field tps "$ref_tls"); cpu_tls=$(field cpu_ms_per_tx "$ref_tls")

rows=()
run() { # label store sslmode latency rate clients reference-tps reference-cpu
    local label=$1 store=$2 ssl=$3 lat=$4 rate=$5 clients=$6 rtps=$7 rcpu=$8
    local out
    out=$("$bin_dir/piaojia-bench-delivery" --bin "$bin_dir/piaojia" --store "$store" --pg-sslmode "$ssl" --seconds "$seconds" \
        --warmup 3 --rate "$rate" --clients "$clients" --wechat-latency-ms "$lat" 2>&1) || {
        echo "$out" >&2
        echo "FAILED: $label" >&2
        exit 1
    }
    local summary
    summary=$(grep '^summary' <<<"$out")
    echo "$label: $summary" >&2
    rows+=("$label|$(field delivered_per_sec "$summary")|$rtps|$(field cpu_ms_per_receipt "$summary")|$(field piaojia_ms "$summary")|$(field postgres_ms "$summary")|$(field redis_ms "$summary")|$rcpu|$(field idle_pct "$summary")|$(field p50_ms "$summary")|$(field p99_ms "$summary")|$(field push_p99_ms "$summary")")
}

for lat in 0 50; do
    run "sqlite wechat=${lat}ms 64 in flight" sqlite disable "$lat" 0 64 "$tps_plain" "$cpu_plain"
    run "postgres wechat=${lat}ms 64 in flight" postgres disable "$lat" 0 64 "$tps_plain" "$cpu_plain"
    run "postgres+tls wechat=${lat}ms 64 in flight" postgres require "$lat" 0 64 "$tps_tls" "$cpu_tls"
done
for factor in 0.15 0.3; do
    rate_plain=$(python3 -c "print(int($tps_plain*$factor))")
    rate_tls=$(python3 -c "print(int($tps_tls*$factor))")
    run "sqlite open ${factor}x=${rate_plain}/s" sqlite disable 0 "$rate_plain" 256 "$tps_plain" "$cpu_plain"
    run "postgres open ${factor}x=${rate_plain}/s" postgres disable 0 "$rate_plain" 256 "$tps_plain" "$cpu_plain"
    run "postgres+tls open ${factor}x=${rate_tls}/s" postgres require 0 "$rate_tls" 256 "$tps_tls" "$cpu_tls"
done

python3 - "${rows[@]}" <<'PY'
import sys, datetime
print(f"\npiaojia throughput, {datetime.date.today()}, machine: {__import__('os').cpu_count()} cores")
h = ("run", "receipts/s", "x ref tps", "cpu-ms/receipt", "piaojia", "postgres", "redis", "x ref cpu", "idle %", "p50 ms", "p99 ms", "push p99 ms")
print("| " + " | ".join(h) + " |")
print("|" + "---|" * len(h))
for row in sys.argv[1:]:
    label, rps, rtps, cpu, pj, pg, rd, rcpu, idle, p50, p99, pp99 = row.split("|")
    print(f"| {label} | {float(rps):.0f} | {float(rps)/float(rtps):.2f} | {float(cpu):.2f} | {float(pj):.2f} | {float(pg):.2f} | {float(rd):.2f} | {float(cpu)/float(rcpu):.1f} | {idle} | {p50} | {p99} | {pp99} |")
PY
