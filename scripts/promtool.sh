#!/usr/bin/env bash
# Checks the Prometheus files in deploy/prometheus with promtool:
#
#   bash scripts/promtool.sh
#
# 1. promtool check rules deploy/prometheus/alerts.yml       (syntax, templates)
# 2. promtool test rules  deploy/prometheus/alerts.test.yml  (unit tests: every
#    alert fires on the series it is meant for, and stays quiet on healthy and
#    low traffic)
# 3. promtool check config deploy/prometheus/prometheus.yml  (the scrape config;
#    its compose host names are DNS service discovery, not resolved by the
#    check; its rule file is the path inside the Prometheus container,
#    /etc/prometheus/alerts.yml, so a copy naming this checkout's alerts.yml is
#    checked)
#
# promtool comes from PATH, else from a cache directory
# (${XDG_CACHE_HOME:-$HOME/.cache}/piaojia/promtool), else it is extracted there
# from Debian's `prometheus` package without installing it (the package would
# set up a daemon): `apt-get download prometheus` and `dpkg -x`. Set PROMTOOL to
# use another binary. No sudo, no prompts; exits non-zero when a check fails.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

cache="${XDG_CACHE_HOME:-$HOME/.cache}/piaojia/promtool"

find_promtool() {
    if [ -n "${PROMTOOL:-}" ]; then
        echo "$PROMTOOL"
    elif command -v promtool >/dev/null 2>&1; then
        command -v promtool
    elif [ -x "$cache/usr/bin/promtool" ]; then
        echo "$cache/usr/bin/promtool"
    else
        return 1
    fi
}

# Every step checks its status: `set -e` does not apply inside a function
# called from an `||` list.
fetch_promtool() {
    if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
        echo "promtool is not on PATH and apt-get/dpkg are missing to fetch it;" >&2
        echo "install promtool (https://prometheus.io/download/) or set PROMTOOL" >&2
        return 1
    fi
    local tmp
    tmp="$(mktemp -d)" || return 1
    echo "promtool not found: extracting it from Debian's prometheus package into $cache" >&2
    # apt-get download writes into the current directory. As root it warns that
    # the download is unsandboxed (the _apt user cannot write there): harmless.
    if ! (cd "$tmp" && apt-get download prometheus </dev/null >&2); then
        if [ "$(id -u)" = 0 ]; then
            echo "apt-get download failed; refreshing the package lists (apt-get update) and retrying" >&2
            apt-get update -qq </dev/null >&2 || true
        fi
        if ! (cd "$tmp" && apt-get download prometheus </dev/null >&2); then
            echo "apt-get download prometheus failed: install promtool or set PROMTOOL" >&2
            rm -rf "$tmp"
            return 1
        fi
    fi
    if ! dpkg -x "$tmp"/prometheus_*.deb "$tmp/root" ||
        ! mkdir -p "$cache/usr/bin" ||
        ! cp "$tmp/root/usr/bin/promtool" "$cache/usr/bin/promtool"; then
        echo "extracting promtool from the package failed" >&2
        rm -rf "$tmp"
        return 1
    fi
    rm -rf "$tmp"
    echo "$cache/usr/bin/promtool"
}

promtool="$(find_promtool || fetch_promtool)"
echo "using $promtool ($("$promtool" --version 2>&1 | head -n 1))"

run() {
    printf '+ %s\n' "$*"
    "$@"
}

failed=()
run "$promtool" check rules deploy/prometheus/alerts.yml || failed+=("check rules")
run "$promtool" test rules deploy/prometheus/alerts.test.yml || failed+=("test rules")
# rule_files names the container's path (docker-compose.yml mounts alerts.yml
# there): check a copy that names this checkout's file instead.
config_dir="$(mktemp -d)"
trap 'rm -rf "$config_dir"' EXIT
sed "s#/etc/prometheus/alerts.yml#$PWD/deploy/prometheus/alerts.yml#" \
    deploy/prometheus/prometheus.yml >"$config_dir/prometheus.yml"
echo "checking deploy/prometheus/prometheus.yml as $config_dir/prometheus.yml (rule_files: $PWD/deploy/prometheus/alerts.yml)"
run "$promtool" check config "$config_dir/prometheus.yml" || failed+=("check config")

if [ "${#failed[@]}" -gt 0 ]; then
    printf 'promtool FAILED: %s\n' "${failed[*]}" >&2
    exit 1
fi
echo "promtool: all checks passed"
