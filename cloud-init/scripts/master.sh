# shellcheck shell=sh
# A master: master1 runs `kubeadm init` and applies the CNI; every other master joins the
# control plane once the previous one answers /readyz (stacked etcd members must join one by one).

KUBECONFIG_ADMIN=/etc/kubernetes/admin.conf

master_main() {
    k8s_prepare
    # etcdctl on every master: how labctl (and a learner) looks at etcd, stacked or external.
    phase etcd-client
    etcd_packages etcd-client
    if [ "$MASTER_INDEX" = 1 ] && [ "$ETCD_TOPOLOGY" = external ]; then
        phase wait-etcd
        etcd_wait_healthy
    fi
    if [ "$MASTER_INDEX" = 1 ]; then
        phase kubeadm-init
        kubeadm_run kubeadm-init init
        phase cni
        master_cni
    else
        phase wait-previous
        wait_for_apiserver wait-previous "$PREVIOUS_MASTER_ADDRESS" "the previous master"
        phase kubeadm-join
        kubeadm_run kubeadm-join join
    fi
    phase kubeconfig
    master_user_kubeconfig
}

# master_cni: fetch the pinned manifest, verify its SHA-256, adapt the pod CIDR, apply it.
master_cni() {
    _cni_file=$LABCTL_STATE_DIR/cni.yaml
    must cni mkdir -p "$LABCTL_STATE_DIR"
    must cni curl --fail --silent --show-error --location --max-time 120 --retry 5 --retry-delay 5 \
        -o "$_cni_file.download" "$CNI_URL"
    printf '%s  %s\n' "$CNI_SHA256" "$_cni_file.download" | sha256sum -c --status ||
        fail cni "$CNI_URL does not match its pinned SHA-256 $CNI_SHA256"
    cni_adapt "$_cni_file.download" "$_cni_file"
    wait_for 30 10 timeout 120 kubectl --kubeconfig "$KUBECONFIG_ADMIN" apply -f "$_cni_file" ||
        fail cni "kubectl apply -f $_cni_file failed 30 times"
}

# cni_adapt VERIFIED OUT: write the verified manifest with the lab's pod CIDR in place of the
# manifest's own (CNI_POD_CIDR, empty when the CNI reads kubeadm's podSubnet itself).
cni_adapt() {
    if [ -z "$CNI_POD_CIDR" ] || [ "$CNI_POD_CIDR" = "$POD_CIDR" ]; then
        must cni mv -f "$1" "$2"
        return 0
    fi
    grep -q "\"Network\": \"$CNI_POD_CIDR\"" "$1" ||
        fail cni "the manifest has no \"Network\": \"$CNI_POD_CIDR\" to set to $POD_CIDR"
    sed "s#\"Network\": \"$CNI_POD_CIDR\"#\"Network\": \"$POD_CIDR\"#" "$1" >"$2" ||
        fail cni "cannot write $2"
    grep -q "\"Network\": \"$POD_CIDR\"" "$2" || fail cni "setting the pod network $POD_CIDR failed"
}

# The lab user can run kubectl on any master.
master_user_kubeconfig() {
    _home=$(getent passwd "$LAB_USER" | cut -d: -f6)
    [ -n "$_home" ] || fail kubeconfig "no home directory for $LAB_USER"
    must kubeconfig install -d -m 0700 -o "$LAB_USER" -g "$(id -gn "$LAB_USER")" "$_home/.kube"
    must kubeconfig install -m 0600 -o "$LAB_USER" -g "$(id -gn "$LAB_USER")" "$KUBECONFIG_ADMIN" "$_home/.kube/config"
}
