#!/bin/sh
# Forms the Redis Cluster from the nodes given as arguments (host:port, masters first),
# once: the `redis-cluster-init` service runs it on every `docker compose up`, so it must
# leave an already formed cluster alone.
#
# Environment:
#   REDIS_CLI_OPTS  extra redis-cli flags, word-split on purpose (production: the TLS flags)
#   REDISCLI_AUTH   the password, read by redis-cli itself (kept off the command line)
set -eu

if [ "$#" -ne 6 ]; then
    echo "usage: cluster-init.sh HOST:PORT x6 (three masters first, then three replicas)" >&2
    exit 2
fi
first_host=${1%:*}
first_port=${1##*:}

# Deliberately unquoted: REDIS_CLI_OPTS holds several flags and no value has spaces.
# shellcheck disable=SC2086
cli() { redis-cli ${REDIS_CLI_OPTS:-} "$@"; }

# One field of CLUSTER INFO from the first node, e.g. `info cluster_state`.
info() {
    cli -h "$first_host" -p "$first_port" cluster info | tr -d '\r' | sed -n "s/^$1://p"
}

wait_for_ok() {
    i=0
    while [ "$i" -lt 60 ]; do
        if [ "$(info cluster_state)" = ok ]; then
            echo "cluster_state:ok"
            cli -h "$first_host" -p "$first_port" cluster nodes
            return 0
        fi
        i=$((i + 1))
        sleep 1
    done
    echo "the cluster did not reach cluster_state:ok within 60s" >&2
    cli -h "$first_host" -p "$first_port" cluster info >&2 || true
    return 1
}

# redis-cli exits 0 on error replies (NOAUTH, LOADING), hence the match on PONG.
if ! cli -h "$first_host" -p "$first_port" ping | grep -q PONG; then
    echo "$1 does not answer PING" >&2
    exit 1
fi

if [ "$(info cluster_state)" = ok ]; then
    echo "cluster already formed; nothing to do"
    exit 0
fi

# A node that knows others was formed before (a restart, the volumes kept): give gossip
# time to converge instead of running `--cluster create`, which refuses non-empty nodes.
if [ "$(info cluster_known_nodes)" != 1 ]; then
    echo "cluster exists but is not ok yet; waiting"
    wait_for_ok
    exit 0
fi

# redis-cli makes the first three (6 / (1 + replicas)) nodes masters, in argument order,
# and gives slots 0-5460, 5461-10922, 10923-16383 to them in that order. It picks each
# master's replica itself, so check the pairing with `cluster nodes` / `cluster shards`.
cli --cluster create "$@" --cluster-replicas 1 --cluster-yes
wait_for_ok
