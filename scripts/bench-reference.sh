#!/usr/bin/env bash
# The ceiling every throughput figure is a ratio to: pgbench running issue #11's
# reference transaction (scripts/bench/reference.sql) on this machine, now.
#
#   bash scripts/bench-reference.sh [seconds] [clients] [database-url]
#
# Prints one line: `reference tps=… cpu_ms_per_tx=… idle=…%`, where CPU is the
# PostgreSQL backends' and pgbench's own, read from /proc, per transaction, and
# idle is the machine's idle share during the run. TLS follows the URL
# (`sslmode=require` for the TLS variant).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-15}"
clients="${2:-16}"
base="${3:-postgres://postgres@127.0.0.1:5432/test}"
db="piaojia_bench_reference"
admin="${base%/*}/postgres"
query_sep="?"
case "$base" in *\?*) admin="${base%%\?*}"; admin="${admin%/*}/postgres?${base#*\?}"; query_sep="&";; esac
psql -q "$admin" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
url="${base%%\?*}"; url="${url%/*}/$db"; case "$base" in *\?*) url="$url?${base#*\?}";; esac
psql -q "$url" >/dev/null <<'SQL'
CREATE TABLE ref_receipts (id uuid PRIMARY KEY, agency text NOT NULL, bill_no bigint NOT NULL,
    body jsonb NOT NULL, received_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE ref_outbox (id bigserial PRIMARY KEY, receipt_id uuid NOT NULL REFERENCES ref_receipts(id),
    channel text NOT NULL, status text NOT NULL, due_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ref_outbox_due ON ref_outbox (status, due_at);
SQL
# A receipt-shaped body of about 1.5 KB.
body=$(python3 - <<'PY'
import json
items=[{"chargeCode":f"{i:04d}","chargeName":"西药费","unit":"盒","std":"12.50","number":"2","amt":"25.00","selfAmt":"0.00","remark":""} for i in range(9)]
print(json.dumps({"billBatchCode":"11010124","billNo":"0000000001","random":"a1b2c3","busNo":"ZY2026","payer":"张三","totalAmt":"225.00","chargeDetail":items},ensure_ascii=False))
PY
)
cpu_of() { # user+system seconds of the postmaster's reaped children and live processes named $1
    python3 - "$@" <<'PY'
import os,sys
hz=os.sysconf("SC_CLK_TCK"); total=0.0
for pid in os.listdir("/proc"):
    if not pid.isdigit(): continue
    try:
        st=open(f"/proc/{pid}/stat").read()
    except OSError: continue
    name=st[st.index("(")+1:st.rindex(")")]; f=st[st.rindex(")")+2:].split()
    if name.startswith("postgres") or name.startswith("postmaster") or name=="pgbench":
        total+=(int(f[11])+int(f[12]))/hz
        if f[1]=="1" or name.startswith("postmaster"): total+=(int(f[13])+int(f[14]))/hz
print(f"{total:.3f}")
PY
}
idle_ticks() { awk '/^cpu /{print $5+$6, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
read -r idle0 all0 < <(idle_ticks)
cpu0=$(cpu_of)
out=$(pgbench -n -M prepared -c "$clients" -j 2 -T "$seconds" -D "body=$body" -f scripts/bench/reference.sql "$url" 2>&1) || { echo "$out" >&2; exit 1; }
cpu1=$(cpu_of)
read -r idle1 all1 < <(idle_ticks)
tps=$(echo "$out" | awk -F'= ' '/^tps/{split($2,a," "); print a[1]}')
tx=$(echo "$out" | awk -F': ' '/number of transactions actually processed/{split($2,a,"/"); print a[1]}')
python3 - "$tps" "$tx" "$cpu0" "$cpu1" "$idle0" "$idle1" "$all0" "$all1" "$clients" "$base" <<'PY'
import sys
tps,tx,c0,c1,i0,i1,a0,a1,clients,url=sys.argv[1:]
tx=int(tx); cpu=(float(c1)-float(c0))*1000/max(tx,1)
idle=100*(float(i1)-float(i0))/max(float(a1)-float(a0),1)
tls="tls" if "sslmode=require" in url else "plain"
print(f"reference tps={float(tps):.0f} cpu_ms_per_tx={cpu:.3f} idle={idle:.0f}% clients={clients} {tls}")
PY
psql -q "$admin" -c "DROP DATABASE IF EXISTS $db" >/dev/null
