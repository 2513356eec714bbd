#!/bin/sh
# Makes the certificates docker-compose.prod.yml mounts, in docker/tls/ (git-ignored):
#   ca.crt, ca.key          a private CA (ca.key stays here; no container mounts it)
#   redis.crt, redis.key    the nodes' certificate, for clients and for node-to-node TLS
#   client.crt, client.key  a client certificate (the nodes require one: tls-auth-clients)
# Usage: docker/gen-certs.sh [--force]   (--force replaces existing files)
# GEN_CERTS_DIR=DIR writes them to DIR instead (tests/docker_compose.rs does).
#
# For trying the production setup; a real deployment takes its certificates from its own CA.
set -eu

dir=${GEN_CERTS_DIR:-$(cd "$(dirname "$0")" && pwd)/tls}
days=825 # the longest leaf lifetime some TLS clients accept

if [ -e "$dir/ca.crt" ] && [ "${1:-}" != --force ]; then
    echo "$dir/ca.crt exists; pass --force to replace every certificate" >&2
    exit 1
fi
mkdir -p "$dir"
cd "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cat >"$tmp/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
# Nodes present this certificate to clients and, with tls-cluster and tls-replication, to
# each other as clients too: hence both purposes. Clients check the name they dialled
# against these SANs: the service names inside the compose network, localhost and
# 127.0.0.1 from the host.
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:redis-cluster-0, DNS:redis-cluster-1, DNS:redis-cluster-2, DNS:redis-cluster-3, DNS:redis-cluster-4, DNS:redis-cluster-5, DNS:localhost, IP:127.0.0.1
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
EOF

# Random serials: no ca.srl to keep, and reissued certificates never repeat one.
serial() { echo "0x$(openssl rand -hex 16)"; }

openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days 3650 \
    -config "$tmp/openssl.cnf" -extensions ca -subj "/CN=redcluster dev CA" \
    -keyout ca.key -out ca.crt

# $1: file stem, $2: extension section, $3: subject common name.
issue() {
    openssl req -new -nodes -newkey rsa:2048 -sha256 \
        -config "$tmp/openssl.cnf" -subj "/CN=$3" -keyout "$1.key" -out "$tmp/$1.csr"
    openssl x509 -req -sha256 -days "$days" -in "$tmp/$1.csr" \
        -CA ca.crt -CAkey ca.key -set_serial "$(serial)" \
        -extfile "$tmp/openssl.cnf" -extensions "$2" -out "$1.crt"
}
issue redis server redis-cluster
issue client client redcluster-client

# Redis runs as the image's `redis` user (uid 999), which must read redis.key through the
# bind mount, whoever owns it on the host (rootless Docker maps uids too): so the two leaf
# keys are world-readable. The CA key, which can mint certificates, is not, and is never
# mounted.
chmod 0644 redis.key client.key
chmod 0600 ca.key

openssl verify -CAfile ca.crt redis.crt client.crt
echo "certificates written to $dir"
