# shellcheck shell=sh
# A master: master1 waits for the load balancer, runs `kubeadm init` and applies the CNI manifest
# that came with its seed; every other master joins the control plane once the previous one answers
# /readyz (stacked etcd members must join one by one).

KUBECONFIG_ADMIN=/etc/kubernetes/admin.conf

master_main() {
    k8s_prepare
    # etcdctl on every master: how labctl (and a learner) looks at etcd, stacked or external.
    step etcd-client etcd_client
    if [ "$MASTER_INDEX" = 1 ] && [ "$ETCD_TOPOLOGY" = external ]; then
        step wait-etcd etcd_wait_healthy
    fi
    if [ "$MASTER_INDEX" = 1 ]; then
        step wait-lb master_wait_lb
        step kubeadm-init master_init
        step cni master_cni
    else
        step wait-previous master_wait_previous
        step kubeadm-join master_join
    fi
    step kubeconfig master_user_kubeconfig
}

master_wait_lb() {
    wait_until wait-lb "$LB_WAIT" "$LB_DEPENDS" "the load balancer ($API_NAME:$API_PORT) accepted no connection" \
        tcp_open "$API_NAME" "$API_PORT"
}

master_init() {
    kubeadm_run kubeadm-init init
}

master_wait_previous() {
    wait_until wait-previous "$PREVIOUS_WAIT" "$PREVIOUS_DEPENDS" \
        "the previous master ($PREVIOUS_MASTER_ADDRESS:$API_PORT) did not answer /readyz" \
        readyz "$PREVIOUS_MASTER_ADDRESS"
}

master_join() {
    kubeadm_run kubeadm-join join
}

# master_cni: the manifest labctl fetched, verified and adapted on the host, checked and applied.
master_cni() {
    printf '%s  %s\n' "$CNI_SHA256" "$CNI_MANIFEST" | sha256sum -c --status ||
        fail cni "$CNI_MANIFEST does not match the SHA-256 labctl computed ($CNI_SHA256)"
    wait_until cni "$CNI_WAIT" "" "kubectl apply -f $CNI_MANIFEST did not succeed" \
        timeout 120 kubectl --kubeconfig "$KUBECONFIG_ADMIN" apply -f "$CNI_MANIFEST"
}

# The lab user can run kubectl on any master.
master_user_kubeconfig() {
    _home=$(getent passwd "$LAB_USER" | cut -d: -f6)
    [ -n "$_home" ] || fail kubeconfig "no home directory for $LAB_USER"
    must kubeconfig install -d -m 0700 -o "$LAB_USER" -g "$(id -gn "$LAB_USER")" "$_home/.kube"
    must kubeconfig install -m 0600 -o "$LAB_USER" -g "$(id -gn "$LAB_USER")" "$KUBECONFIG_ADMIN" "$_home/.kube/config"
}
