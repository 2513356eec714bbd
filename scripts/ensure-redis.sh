#!/usr/bin/env bash
# Installs redis-server (7.0 or newer) when it is missing. Debian/Ubuntu only; elsewhere
# it says what to do. The tests and examples start their own servers on 127.0.0.1, from
# REDCLUSTER_REDIS_SERVER when it is set, else the redis-server on PATH.
set -euo pipefail

# Succeeds when $1 runs and is Redis 7 or newer; says why not otherwise.
new_enough() {
    local version major
    version=$("$1" --version 2>/dev/null | sed -n 's/.*v=\([0-9][0-9.]*\).*/\1/p' || true)
    major=${version%%.*}
    if [ -z "$major" ]; then
        echo "$1 does not run or does not say its version" >&2
        return 1
    fi
    if [ "$major" -lt 7 ]; then
        echo "$1 is Redis $version; the tests and examples need 7.0 or newer" \
             "(Debian 12 and Ubuntu 24.04 package 7; on older releases install it from" \
             "packages.redis.io, or set REDCLUSTER_REDIS_SERVER to a Redis 7 or Valkey" \
             "redis-server)" >&2
        return 1
    fi
}

if [ -n "${REDCLUSTER_REDIS_SERVER:-}" ]; then
    new_enough "$REDCLUSTER_REDIS_SERVER"
    exit $?
fi
if command -v redis-server >/dev/null 2>&1; then
    new_enough redis-server
    exit $?
fi
if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    echo "redis-server is missing; installing it with apt-get" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
    # The package may start a system-wide server on 6379; nothing here uses it.
    new_enough redis-server
    exit $?
fi
echo "redis-server is missing: install Redis 7 (macOS: 'brew install redis'," \
     "Fedora: 'dnf install redis') or set REDCLUSTER_REDIS_SERVER to its path" >&2
exit 1
