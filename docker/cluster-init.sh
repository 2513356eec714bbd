#!/bin/sh
# Forms the Redis Cluster from six nodes given as HOST:PORT: three masters, then their
# replicas in the same order (the fourth replicates the first, and so on). The
# `redis-cluster-init` service runs it on every `docker compose up`, so it leaves an
# already formed cluster alone.
#
# Environment:
#   REDIS_CLI_OPTS  extra redis-cli flags, word-split on purpose (production: the TLS flags)
#   REDISCLI_AUTH   the password, read by redis-cli itself (kept off the command line)
set -eu

if [ "$#" -ne 6 ]; then
    echo "usage: cluster-init.sh MASTER1 MASTER2 MASTER3 REPLICA1 REPLICA2 REPLICA3 (HOST:PORT)" >&2
    exit 2
fi
first=$1

# `cli HOST:PORT ARGS...`: a redis-cli command for one node, its reply without the \r.
# REDIS_CLI_OPTS is unquoted on purpose: several flags, none with spaces.
# shellcheck disable=SC2086
cli() {
    node=$1
    shift
    redis-cli ${REDIS_CLI_OPTS:-} -h "${node%:*}" -p "${node##*:}" "$@" | tr -d '\r'
}

# One field of the first node's CLUSTER INFO, e.g. `info cluster_state`.
info() { cli "$first" cluster info | sed -n "s/^$1://p"; }

# The master a node replicates, as that node sees itself (empty for a master).
master_of() { cli "$1" cluster nodes | awk '$3 ~ /myself/ && $4 != "-" { print $4 }'; }

# `wait_until WHAT COMMAND...`: retries COMMAND every second for up to a minute.
wait_until() {
    what=$1
    shift
    i=0
    until "$@"; do
        i=$((i + 1))
        if [ "$i" -ge 60 ]; then
            echo "gave up after 60s waiting for: $what" >&2
            cli "$first" cluster nodes >&2 || true
            exit 1
        fi
        sleep 1
    done
}

cluster_ok() { [ "$(info cluster_state)" = ok ]; }

# redis-cli exits 0 on error replies (NOAUTH, LOADING), hence the match on PONG.
if [ "$(cli "$first" ping)" != PONG ]; then
    echo "$first does not answer PING: $(cli "$first" ping 2>&1)" >&2
    exit 1
fi

if cluster_ok; then
    echo "cluster already formed; nothing to do"
    exit 0
fi

# A node that knows others was formed before (a restart with the volumes kept): let gossip
# converge; `--cluster create` would refuse non-empty nodes anyway.
if [ "$(info cluster_known_nodes)" != 1 ]; then
    echo "cluster exists but is not ok yet; waiting"
    wait_until cluster_state:ok cluster_ok
    echo "cluster_state:ok"
    exit 0
fi

# redis-cli makes the first three (6 / (1 + replicas)) nodes masters, in argument order,
# and gives them slots 0-5460, 5461-10922, 10923-16383 in that order.
# shellcheck disable=SC2086
redis-cli ${REDIS_CLI_OPTS:-} --cluster create "$@" --cluster-replicas 1 --cluster-yes
wait_until cluster_state:ok cluster_ok

# redis-cli pairs replicas with masters by its own rule (it gave redis-cluster-4 to
# redis-cluster-0 when tried). Re-point each replica to the master in its position, the
# seed's topology, so docs and failover drills can name the pairs.
masters="$(cli "$1" cluster myid) $(cli "$2" cluster myid) $(cli "$3" cluster myid)"
shift 3
for want in $masters; do
    replica=$1
    shift
    if [ "$(master_of "$replica")" != "$want" ]; then
        reply=$(cli "$replica" cluster replicate "$want")
        if [ "$reply" != OK ]; then
            echo "$replica: CLUSTER REPLICATE $want: $reply" >&2
            exit 1
        fi
        echo "$replica now replicates $want"
    fi
done

# Done when the first node's view has the three pairs too (gossip takes a moment).
# $masters is split on purpose: three IDs.
# shellcheck disable=SC2086
pairs_seen() {
    [ "$(cli "$first" cluster nodes | awk '$3 ~ /slave/ { print $4 }' | sort | tr '\n' ' ')" = \
        "$(printf '%s\n' $masters | sort | tr '\n' ' ')" ]
}
wait_until "three master/replica pairs" pairs_seen
wait_until cluster_state:ok cluster_ok
echo "cluster_state:ok"
cli "$first" cluster nodes
