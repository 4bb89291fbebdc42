#!/usr/bin/env bash
# The piaojia test command: run the whole workspace test suite once.
#
#   bash scripts/test.sh [extra cargo-nextest arguments]
#
# 1. scripts/promtool.sh checks the Prometheus alert rules, runs their unit
#    tests (deploy/prometheus/alerts.test.yml) and checks prometheus.yml; a
#    failure is reported at the end, the Rust tests still run.
# 2. scripts/services.sh makes sure PostgreSQL (127.0.0.1:5432, database
#    `test`), Redis (127.0.0.1:6379) and an S3-compatible server (moto,
#    127.0.0.1:5000) are installed and running.
# 3. Every API test runs on both stores internally (SQLite, and
#    PostgreSQL + Redis through PIAOJIA_TEST_DATABASE_URL and
#    PIAOJIA_TEST_REDIS_URL), so one run covers both. The S3 file store's
#    tests use PIAOJIA_TEST_S3_ENDPOINT (they fail under CI=true without it).
#    The OpenAPI drift test is an ordinary test and runs here too.
# 4. Doc tests run separately (nextest does not run them).
#
# Extra arguments go to `cargo nextest run` (or to `cargo test` when nextest is
# not installed), e.g. a test-name filter `bash scripts/test.sh receipts` or a
# filter expression `bash scripts/test.sh -E 'package(piaojia-store)'`.
# Exits non-zero when anything fails.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() { printf '\n=== %s\n' "$*"; }

failed=()

section "promtool: deploy/prometheus alert rules, their tests, the scrape config"
bash scripts/promtool.sh </dev/null || failed+=("promtool")

section "services"
bash scripts/services.sh

export PIAOJIA_TEST_DATABASE_URL="${PIAOJIA_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
export PIAOJIA_TEST_REDIS_URL="${PIAOJIA_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
export PIAOJIA_TEST_S3_ENDPOINT="${PIAOJIA_TEST_S3_ENDPOINT:-http://127.0.0.1:${PIAOJIA_S3_PORT:-5000}}"
echo "PIAOJIA_TEST_DATABASE_URL=$PIAOJIA_TEST_DATABASE_URL"
echo "PIAOJIA_TEST_REDIS_URL=$PIAOJIA_TEST_REDIS_URL"
echo "PIAOJIA_TEST_S3_ENDPOINT=$PIAOJIA_TEST_S3_ENDPOINT"

if cargo nextest --version >/dev/null 2>&1; then
    section "cargo nextest run --workspace --all-targets --no-fail-fast $*"
    cargo nextest run --workspace --all-targets --no-fail-fast "$@" || failed+=("tests (nextest)")
else
    echo "cargo-nextest is not installed (cargo install cargo-nextest --locked); using cargo test" >&2
    section "cargo test --workspace --all-targets --no-fail-fast $*"
    cargo test --workspace --all-targets --no-fail-fast "$@" || failed+=("tests (cargo test)")
fi

section "cargo test --workspace --doc"
cargo test --workspace --doc || failed+=("doc tests")

if [ "${#failed[@]}" -gt 0 ]; then
    printf '\nFAILED: %s\n' "${failed[*]}" >&2
    exit 1
fi
printf '\nall tests passed\n'
