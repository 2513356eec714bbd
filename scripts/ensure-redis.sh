#!/usr/bin/env bash
# Installs redis-server (7.0 or newer) when it is missing. Debian/Ubuntu only; elsewhere
# it says what to do. The tests and examples start their own servers on 127.0.0.1.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    echo "redis-server is missing; installing it with apt-get" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
    # The package may start a system-wide server on 6379; nothing here uses it.
    exit 0
fi
echo "redis-server is missing: install Redis 7 (macOS: 'brew install redis'," \
     "Fedora: 'dnf install redis') or set REDCLUSTER_REDIS_SERVER to its path" >&2
exit 1
