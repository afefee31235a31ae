#!/bin/sh
# labctl drill: GET URL (verified with CA) every INTERVAL seconds, COUNT times at most, one line each:
#   <unix time> <HTTP status, 000 when no answer>
#   api-probe.sh URL CA COUNT INTERVAL
set -u
url=$1 ca=$2 count=$3 interval=$4
i=0
while [ "$i" -lt "$count" ]; do
    code=$(curl --silent --output /dev/null --write-out '%{http_code}' --max-time 2 --cacert "$ca" "$url") ||
        code=${code:-000}
    printf '%s %s\n' "$(date +%s)" "$code"
    i=$((i + 1))
    sleep "$interval"
done
