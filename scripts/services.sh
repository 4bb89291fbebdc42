#!/usr/bin/env bash
# Make sure the services the test suite needs are installed, running and
# reachable on localhost:
#
#   * PostgreSQL on 127.0.0.1:5432, trust auth for user `postgres` over local
#     TCP, with a database `test`;
#   * Redis on 127.0.0.1:6379;
#   * an S3-compatible server on 127.0.0.1:5000: the standalone server of PyPI's
#     `moto` (`python3 -m moto.server`), for the S3 file store's tests;
#   * PyPI's `standardwebhooks`, the reference library the webhook tests verify with.
#
# Idempotent: when all three already answer it changes nothing except dropping
# test databases (`piaojia_test_*`, `piaojia_store_*`) that earlier runs left
# behind. Prints every action it takes.
#
# Environment knobs:
#   PIAOJIA_SERVICES_TIMEOUT          seconds to wait for both services (60)
#   PIAOJIA_TEST_DB_MIN_AGE_MINUTES   only drop leftover test databases that are
#                                     at least this old and have no open
#                                     connection, so a test run going on in
#                                     parallel is not disturbed (10; 0 = any age)
#   PIAOJIA_KEEP_TEST_DBS=1           do not drop leftover test databases
#   PIAOJIA_S3_PORT                   port of the S3-compatible server (5000)
#   PIAOJIA_MOTO_VENV                 where moto is installed when the system
#                                     Python refuses pip installs
#                                     (/opt/piaojia-moto)
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT=5432
REDIS_HOST=127.0.0.1
REDIS_PORT=6379
S3_HOST=127.0.0.1
S3_PORT="${PIAOJIA_S3_PORT:-5000}"
MOTO_VENV="${PIAOJIA_MOTO_VENV:-/opt/piaojia-moto}"
MOTO_LOG="${TMPDIR:-/tmp}/piaojia-moto-$S3_PORT.log"
TIMEOUT="${PIAOJIA_SERVICES_TIMEOUT:-60}"
MIN_AGE="${PIAOJIA_TEST_DB_MIN_AGE_MINUTES:-10}"

log() { printf '[services] %s\n' "$*"; }
warn() { printf '[services] WARNING: %s\n' "$*" >&2; }
die() {
    printf '[services] ERROR: %s\n' "$*" >&2
    exit 1
}

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n)
    else
        warn "not root and no sudo: installing or configuring services may fail"
    fi
fi
as_root() { "${SUDO[@]}" "$@"; }

export DEBIAN_FRONTEND=noninteractive
# .ci/run sets PIAOJIA_APT_UPDATED=1 after its own apt-get update.
APT_UPDATED="${PIAOJIA_APT_UPDATED:-0}"
apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        die "need to install $* but apt-get is not available; install them by hand"
    if [ "$APT_UPDATED" != 1 ]; then
        log "apt-get update"
        as_root apt-get update -q </dev/null
        APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    as_root apt-get install -y -q --no-install-recommends "$@" </dev/null
}

psql_pg() {
    # psql against the maintenance db as postgres over TCP, never prompting.
    local db="$1"
    shift
    psql -X -w -q -h "$PG_HOST" -p "$PG_PORT" -U postgres -d "$db" -v ON_ERROR_STOP=1 "$@" </dev/null
}

pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1; }
redis_up() {
    [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null </dev/null)" = "PONG" ]
}
# The S3 server answers its ListBuckets (GET /) with 200; bash's /dev/tcp needs no curl.
s3_up() {
    timeout 3 bash -c "exec 3<>/dev/tcp/$S3_HOST/$S3_PORT &&
        printf 'GET / HTTP/1.0\\r\\nHost: $S3_HOST\\r\\n\\r\\n' >&3 &&
        head -n1 <&3 | grep -q ' 200 '" 2>/dev/null </dev/null
}

# ---------------------------------------------------------------- install ---
pkgs=()
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    pkgs+=(postgresql)
elif ! command -v psql >/dev/null 2>&1 || ! command -v pg_isready >/dev/null 2>&1; then
    pkgs+=(postgresql-client)
fi
if ! command -v redis-server >/dev/null 2>&1; then
    pkgs+=(redis-server)
elif ! command -v redis-cli >/dev/null 2>&1; then
    pkgs+=(redis-tools)
fi
if [ "${#pkgs[@]}" -gt 0 ]; then
    apt_install "${pkgs[@]}"
else
    log "PostgreSQL and Redis are installed"
fi

# moto (the S3-compatible server): the machine's python3 with pip, else a venv.
MOTO_PY=""
moto_python() {
    local py
    for py in python3 "$MOTO_VENV/bin/python"; do
        if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import moto.server' >/dev/null 2>&1 </dev/null; then
            MOTO_PY="$(command -v "$py")"
            return 0
        fi
    done
    return 1
}
if ! s3_up && ! moto_python; then
    if ! command -v python3 >/dev/null 2>&1; then
        apt_install python3 python3-pip python3-venv
    fi
    log "pip install 'moto[server]'"
    if ! python3 -m pip install -q 'moto[server]' </dev/null; then
        # A system Python that refuses pip installs (PEP 668): a venv of our own.
        python3 -m venv --help >/dev/null 2>&1 </dev/null || apt_install python3-venv
        log "installing moto into $MOTO_VENV"
        as_root python3 -m venv "$MOTO_VENV" </dev/null
        as_root "$MOTO_VENV/bin/python" -m pip install -q 'moto[server]' </dev/null
    fi
    moto_python || die "moto is installed but python3 -c 'import moto.server' fails"
elif s3_up; then
    log "an S3-compatible server answers on $S3_HOST:$S3_PORT"
else
    log "moto is installed ($MOTO_PY)"
fi

# standardwebhooks (PyPI): the reference library the webhook tests verify with
# (tests/scripts/verify_standard_webhook.py), in python3 or else in the venv.
if python3 -c 'import standardwebhooks' >/dev/null 2>&1 </dev/null \
    || { [ -x "$MOTO_VENV/bin/python" ] && "$MOTO_VENV/bin/python" -c 'import standardwebhooks' >/dev/null 2>&1 </dev/null; }; then
    log "standardwebhooks is installed"
else
    log "pip install standardwebhooks"
    if ! python3 -m pip install -q standardwebhooks </dev/null; then
        [ -x "$MOTO_VENV/bin/python" ] || as_root python3 -m venv "$MOTO_VENV" </dev/null
        as_root "$MOTO_VENV/bin/python" -m pip install -q standardwebhooks </dev/null
    fi
fi

# -------------------------------------------------------------- PostgreSQL ---
# Pick the cluster that serves port 5432 (or the first one), creating one when
# the package left none behind.
pg_cluster() {
    pg_lsclusters -h 2>/dev/null | awk -v port="$PG_PORT" '
        $3 == port { print $1, $2; found = 1; exit }
        NR == 1 { first = $1 " " $2 }
        END { if (!found && first != "") print first }'
}

PG_VER=""
PG_NAME=""
if ! pg_up; then
    read -r PG_VER PG_NAME <<<"$(pg_cluster)" || true
    if [ -z "$PG_VER" ]; then
        ver="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -n | tail -n1)"
        [ -n "$ver" ] || die "no PostgreSQL server found under /usr/lib/postgresql"
        log "creating PostgreSQL cluster $ver/main on port $PG_PORT"
        as_root pg_createcluster --port "$PG_PORT" "$ver" main
        PG_VER="$ver"
        PG_NAME=main
    fi
    log "starting PostgreSQL cluster $PG_VER/$PG_NAME"
    as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VER" "$PG_NAME" start ||
        warn "pg_ctlcluster start returned an error; waiting for the server anyway"
else
    log "PostgreSQL is accepting connections on $PG_HOST:$PG_PORT"
fi

# ------------------------------------------------------------------- Redis ---
if ! redis_up; then
    log "starting redis-server on $REDIS_HOST:$REDIS_PORT"
    (cd / && redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" \
        --save "" --appendonly no </dev/null) ||
        warn "redis-server returned an error; waiting for it anyway"
else
    log "Redis answers PONG on $REDIS_HOST:$REDIS_PORT"
fi

# ---------------------------------------------------------------------- S3 ---
if ! s3_up; then
    log "starting moto's S3 server on $S3_HOST:$S3_PORT (log: $MOTO_LOG)"
    # Detached from this script (setsid, nohup; a simple command, so no shell of
    # ours stays behind holding this script's stdout open): it keeps running.
    setsid nohup "$MOTO_PY" -m moto.server -H "$S3_HOST" -p "$S3_PORT" \
        >"$MOTO_LOG" 2>&1 </dev/null &
fi

# -------------------------------------------------------------------- wait ---
deadline=$((SECONDS + TIMEOUT))
while :; do
    pg_ok=0
    redis_ok=0
    s3_ok=0
    pg_up && pg_ok=1
    redis_up && redis_ok=1
    s3_up && s3_ok=1
    [ "$pg_ok" -eq 1 ] && [ "$redis_ok" -eq 1 ] && [ "$s3_ok" -eq 1 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
        [ "$pg_ok" -eq 1 ] ||
            warn "PostgreSQL is not ready on $PG_HOST:$PG_PORT (see pg_lsclusters and /var/log/postgresql/)"
        [ "$redis_ok" -eq 1 ] ||
            warn "Redis does not answer PING on $REDIS_HOST:$REDIS_PORT"
        [ "$s3_ok" -eq 1 ] ||
            warn "the S3 server does not answer on $S3_HOST:$S3_PORT (see $MOTO_LOG)"
        die "services not ready after ${TIMEOUT}s"
    fi
    sleep 1
done
log "PostgreSQL, Redis and S3 (moto) are up"

# ------------------------------------------------- trust auth over loopback ---
if [ -z "$PG_VER" ]; then
    read -r PG_VER PG_NAME <<<"$(pg_cluster)" || true
fi

if ! psql_pg postgres -Atc 'select 1' >/dev/null 2>&1; then
    hba="/etc/postgresql/$PG_VER/$PG_NAME/pg_hba.conf"
    { [ -n "$PG_VER" ] && as_root test -f "$hba"; } ||
        die "cannot connect to PostgreSQL as postgres without a password and cannot find pg_hba.conf"
    log "enabling trust auth for 127.0.0.1/32 and ::1/128 in $hba"
    as_root cp -p "$hba" "$hba.piaojia.bak"
    as_root sed -E -i \
        's@^([[:space:]]*host[a-z]*[[:space:]]+[^[:space:]]+[[:space:]]+[^[:space:]]+[[:space:]]+(127\.0\.0\.1/32|::1/128)[[:space:]]+)[^[:space:]]+.*$@\1trust@' \
        "$hba"
    # No loopback host line at all: put ours first (pg_hba is first match).
    if ! as_root grep -Eq '^[[:space:]]*host[[:space:]]+all[[:space:]]+(all|postgres)[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
        tmp="$(mktemp)"
        {
            echo "# added by piaojia scripts/services.sh: trust loopback TCP for tests"
            echo "host all all 127.0.0.1/32 trust"
            echo "host all all ::1/128 trust"
            as_root cat "$hba"
        } >"$tmp"
        as_root cp "$tmp" "$hba"
        rm -f "$tmp"
    fi
    log "reloading PostgreSQL cluster $PG_VER/$PG_NAME"
    as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VER" "$PG_NAME" reload
    ok=0
    for _ in $(seq 1 10); do
        if psql_pg postgres -Atc 'select 1' >/dev/null 2>&1; then
            ok=1
            break
        fi
        sleep 1
    done
    [ "$ok" -eq 1 ] || die "still cannot connect as postgres@$PG_HOST:$PG_PORT without a password"
fi

# ---------------------------------------------------------- database `test` ---
if [ "$(psql_pg postgres -Atc "select 1 from pg_database where datname = 'test'")" != "1" ]; then
    log "creating database test"
    psql_pg postgres -c 'CREATE DATABASE test'
fi

# ---------------------------------------------- leftover test databases ---
if [ "${PIAOJIA_KEEP_TEST_DBS:-0}" = "1" ]; then
    log "PIAOJIA_KEEP_TEST_DBS=1: keeping leftover test databases"
else
    [[ "$MIN_AGE" =~ ^[0-9]+$ ]] || die "PIAOJIA_TEST_DB_MIN_AGE_MINUTES must be a whole number"
    # PG_VERSION is written when a database is created, so its mtime is the
    # database's age. Databases somebody is connected to are in use: skip.
    leftovers="$(psql_pg test -Atc "
        select format('%I', d.datname)
        from pg_database d
        where (d.datname like 'piaojia\_test\_%' or d.datname like 'piaojia\_store\_%')
          and not exists (select 1 from pg_stat_activity a where a.datname = d.datname)
          and coalesce((pg_stat_file('base/' || d.oid || '/PG_VERSION', true)).modification
                       <= now() - make_interval(mins => $MIN_AGE), true)
        order by 1")"
    dropped=0
    while IFS= read -r db; do
        [ -n "$db" ] || continue
        if psql_pg test -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"; then
            log "dropped leftover database $db"
            dropped=$((dropped + 1))
        else
            warn "could not drop $db"
        fi
    done <<<"$leftovers"
    in_use="$(psql_pg test -Atc "
        select count(*) from pg_database
        where datname like 'piaojia\_test\_%' or datname like 'piaojia\_store\_%'")"
    log "dropped $dropped leftover test database(s); $in_use recent or in-use one(s) kept"
fi

log "ready: postgres://postgres@$PG_HOST:$PG_PORT/test redis://$REDIS_HOST:$REDIS_PORT http://$S3_HOST:$S3_PORT (S3)"
