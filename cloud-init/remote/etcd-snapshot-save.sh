#!/bin/sh
# labctl etcd snapshot save, run on a master over ssh (as root):
#   etcd-snapshot-save.sh ENDPOINT FILE CA CERT KEY
# Saves a snapshot of the member at ENDPOINT into FILE, then prints its status (JSON, one line) and its
# sha256sum line: labctl copies FILE back and compares before it reports the snapshot saved.
set -eu
endpoint=$1 file=$2 ca=$3 cert=$4 key=$5
umask 077
rm -f "$file" "$file.part"
etcdctl --endpoints="$endpoint" --cacert="$ca" --cert="$cert" --key="$key" --dial-timeout=10s \
    --command-timeout=300s snapshot save "$file" >&2
# etcdutl is etcd-server's; a master carries etcd-client only, whose etcdctl still reads snapshots in 3.5.
if command -v etcdutl >/dev/null 2>&1; then
    etcdutl snapshot status "$file" -w json
else
    etcdctl snapshot status "$file" -w json 2>/dev/null
fi
echo
sha256sum "$file"
