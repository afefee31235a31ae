#!/bin/sh
# labctl etcd snapshot restore, run on each external member over ssh (as root): the snapshot on stdin
# goes to FILE, then its status (JSON, one line) and sha256sum line are printed, for labctl to compare.
#   receive-snapshot.sh FILE
set -eu
file=$1
umask 077
cat >"$file"
etcdutl snapshot status "$file" -w json
echo
sha256sum "$file"
