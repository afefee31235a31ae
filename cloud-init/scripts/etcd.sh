# shellcheck shell=sh
# etcd: an external member (Debian's etcd-server, the lab's configuration and certificates), and what
# masters need of etcd (etcdctl; with an external etcd, every member healthy before `kubeadm init`).
# Staged by the seed: /etc/labctl/etcd.yaml, /etc/labctl/etcd-service.conf, /etc/labctl/etcd-pki/.

ETCD_DROPIN_DIR=/etc/systemd/system/etcd.service.d

etcd_main() {
    step network wait_for_lab_dns
    step packages etcd_member_packages
    step etcd etcd_configure
    step health etcd_health
}

etcd_member_packages() {
    etcd_packages etcd-server etcd-client
}

etcd_health() {
    wait_for "$ETCD_WAIT_TRIES" 5 etcd_local_health ||
        fail health "etcd on $NODE is not healthy after $ETCD_WAIT_TRIES tries 5 s apart (is a majority up?)"
}

# etcd_client: etcdctl on a master (stacked or external).
etcd_client() {
    etcd_packages etcd-client
}

# etcd_packages PACKAGE...: install (pinned to ETCD_PKG_VERSION unless empty, held) unless pre-baked.
etcd_packages() {
    _etcd_step=$LABCTL_PHASE
    if installed "$@"; then
        echo "labctl: $* already installed (pre-baked image)"
    else
        _etcd_pins=
        for _etcd_pkg in "$@"; do
            _etcd_pins="$_etcd_pins $_etcd_pkg${ETCD_PKG_VERSION:+=${ETCD_PKG_VERSION}*}"
        done
        # shellcheck disable=SC2086 # one word per package
        apt_install "$_etcd_step" $_etcd_pins
    fi
    must "$_etcd_step" apt-mark hold "$@"
}

# etcd_configure: certificates for the etcd user, the unit's drop-in, then start without waiting for
# the others (a member is ready only once a majority is up).
etcd_configure() {
    # The package may have started a throwaway single-member etcd with Debian's defaults: end it first.
    systemctl stop etcd.service 2>/dev/null || true
    rm -rf /var/lib/etcd/default
    must etcd install -d -m 0755 "$ETCD_PKI"
    for _etcd_file in "$ETCD_STAGED_PKI"/*.crt; do
        must etcd install -m 0644 "$_etcd_file" "$ETCD_PKI/"
    done
    for _etcd_stem in server peer; do
        must etcd install -m 0600 -o etcd -g etcd "$ETCD_STAGED_PKI/$_etcd_stem.key" "$ETCD_PKI/"
    done
    must etcd install -m 0600 "$ETCD_STAGED_PKI/healthcheck-client.key" "$ETCD_PKI/"
    must etcd install -d -m 0755 "$ETCD_DROPIN_DIR"
    must etcd install -m 0644 "$ETCD_DROPIN" "$ETCD_DROPIN_DIR/labctl.conf"
    must etcd systemctl daemon-reload
    must etcd systemctl enable etcd.service
    must etcd systemctl start --no-block etcd.service
}

# etcd_local_health: this member answers `etcdctl endpoint health` (which needs a leader, so a quorum).
etcd_local_health() {
    etcdctl --endpoints="https://127.0.0.1:2379" --cacert="$ETCD_PKI/ca.crt" \
        --cert="$ETCD_PKI/healthcheck-client.crt" --key="$ETCD_PKI/healthcheck-client.key" \
        --dial-timeout=5s --command-timeout=10s endpoint health >/dev/null 2>&1
}

# etcd_unhealthy: the endpoints of ETCD_ENDPOINTS that do not answer `endpoint health` with the
# apiserver's client certificate, one per line (none: all healthy).
etcd_unhealthy() {
    for _etcd_endpoint in $(printf '%s\n' "$ETCD_ENDPOINTS" | tr ',' ' '); do
        etcdctl --endpoints="$_etcd_endpoint" --cacert="$ETCD_CA" --cert="$ETCD_CLIENT_CERT" \
            --key="$ETCD_CLIENT_KEY" --dial-timeout=5s --command-timeout=10s endpoint health >/dev/null 2>&1 ||
            echo "$_etcd_endpoint"
    done
}

etcd_all_healthy() {
    [ -z "$(etcd_unhealthy)" ]
}

# etcd_wait_healthy: bounded wait until every external member is healthy (so a quorum serves writes, and
# kubeadm's preflight, which asks every endpoint for its version, passes).
etcd_wait_healthy() {
    wait_for "$ETCD_WAIT_TRIES" 5 etcd_all_healthy ||
        fail wait-etcd "etcd not healthy at $(etcd_unhealthy | tr '\n' ' ')after $ETCD_WAIT_TRIES tries 5 s apart" \
            "(is that member up? labctl status)"
}
