#!/bin/sh
# labctl etcd snapshot restore, run on each external member over ssh (as root), with etcd stopped:
#   etcd-restore.sh SNAPSHOT NAME INITIAL_CLUSTER TOKEN PEER_URL DATA_DIR
# Restores SNAPSHOT as member NAME of a new cluster of INITIAL_CLUSTER into DATA_DIR; the data dir it
# replaces is kept beside it as DATA_DIR.before-restore-<time>.
set -eu
snapshot=$1 name=$2 cluster=$3 token=$4 peer=$5 data=$6
rm -rf "$data.restore"
etcdutl snapshot restore "$snapshot" --name "$name" --initial-cluster "$cluster" \
    --initial-cluster-token "$token" --initial-advertise-peer-urls "$peer" --data-dir "$data.restore" >&2
if [ -d "$data" ]; then
    mv "$data" "$data.before-restore-$(date +%Y%m%d%H%M%S)"
fi
mv "$data.restore" "$data"
chown -R etcd:etcd "$data"
chmod 0700 "$data"
rm -f "$snapshot"
