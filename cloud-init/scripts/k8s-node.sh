# shellcheck shell=sh
# What masters and workers share: kernel settings, containerd configured for its major version with
# the systemd cgroup driver, kubelet/kubeadm/kubectl pinned and held, the bounded /readyz probe, and
# kubeadm runs that tell the truth (a marker once it returned 0; after a failed or interrupted run,
# `kubeadm reset` and what it leaves behind, then one more try).

K8S_KEYRING=/etc/apt/keyrings/kubernetes-apt-keyring.asc
K8S_SOURCES=/etc/apt/sources.list.d/kubernetes.list
K8S_KEY_FROM_SEED=/etc/labctl/kubernetes-apt-key.asc
CONTAINERD_CONFIG=/etc/containerd/config.toml
SEED_PKI=/etc/labctl/pki
KUBE_PKI=/etc/kubernetes/pki
KUBEADM_DONE=$LABCTL_STATE_DIR/kubeadm.done
KUBEADM_ATTEMPTS=$LABCTL_STATE_DIR/kubeadm.attempts
# What containerd loaded (`containerd config dump`), not what a file says: runc with the systemd
# cgroup driver, under containerd 1.x's plugin name or 2.x's.
CGROUP_CHECK='import sys, tomllib
plugins = tomllib.loads(sys.stdin.read()).get("plugins", {})
cri = plugins.get("io.containerd.cri.v1.runtime") or plugins.get("io.containerd.grpc.v1.cri") or {}
runc = cri.get("containerd", {}).get("runtimes", {}).get("runc", {})
sys.exit(0 if runc.get("options", {}).get("SystemdCgroup") is True else 1)'

k8s_prepare() {
    step network wait_for_lab_dns
    step kernel k8s_kernel
    step packages k8s_packages
    step containerd k8s_containerd
}

k8s_kernel() {
    must kernel modprobe overlay
    must kernel modprobe br_netfilter
    must kernel sysctl -q -p /etc/sysctl.d/90-labctl-k8s.conf
}

k8s_packages() {
    if installed containerd kubelet kubeadm kubectl curl; then
        echo "labctl: containerd and the Kubernetes tools are already installed (pre-baked image)"
    else
        k8s_install
    fi
}

k8s_install() {
    installed curl ca-certificates || apt_install packages curl ca-certificates
    must packages install -d -m 0755 /etc/apt/keyrings
    if [ -n "$K8S_APT_KEY_URL" ]; then
        # An armored key with the .asc suffix works as signed-by without gpg on the image.
        must packages curl --fail --silent --show-error --location --max-time 60 --retry 5 --retry-delay 5 \
            -o "$K8S_KEYRING" "$K8S_APT_KEY_URL"
    else
        must packages install -m 0644 "$K8S_KEY_FROM_SEED" "$K8S_KEYRING"
    fi
    must packages chmod 0644 "$K8S_KEYRING"
    printf 'deb [signed-by=%s] %s /\n' "$K8S_KEYRING" "$K8S_APT_URL" >"$K8S_SOURCES" ||
        fail packages "cannot write $K8S_SOURCES"
    # K8S_PKG_VERSION ends in "." or "-": the glob picks the newest build of the pinned version.
    apt_install packages containerd conntrack \
        "kubelet=${K8S_PKG_VERSION}*" "kubeadm=${K8S_PKG_VERSION}*" "kubectl=${K8S_PKG_VERSION}*"
    must packages apt-mark hold kubelet kubeadm kubectl
}

# containerd_major: 1 or 2, from `containerd --version` ("containerd <repo> 1.7.24~ds1 <build>").
containerd_major() {
    containerd --version | awk '{ sub(/^v/, "", $3); split($3, v, "."); print v[1] }'
}

k8s_containerd() {
    _major=$(containerd_major) || fail containerd "containerd --version failed"
    [ -n "$_major" ] || fail containerd "containerd --version printed no version"
    _config=/etc/labctl/containerd-$_major.toml
    [ -f "$_config" ] || fail containerd "no labctl configuration for containerd $_major.x ($_config)"
    must containerd install -d -m 0755 /etc/containerd
    must containerd install -m 0644 "$_config" "$CONTAINERD_CONFIG"
    service_up containerd containerd.service
    wait_for 30 2 test -S /run/containerd/containerd.sock ||
        fail containerd "no containerd socket after 60 s"
    containerd config dump | python3 -c "$CGROUP_CHECK" ||
        fail containerd "containerd $_major.x loaded no systemd cgroup driver for runc (containerd config dump)"
    echo "labctl: containerd $_major.x runs runc with the systemd cgroup driver (containerd config dump)"
    must containerd systemctl enable kubelet.service
}

# readyz HOST: the apiserver at HOST answers /readyz over TLS verified with the cluster CA.
readyz() {
    curl --fail --silent --show-error --max-time 10 --cacert "$API_CA" "https://$1:$API_PORT/readyz" >/dev/null
}

# kubeadm_leftovers: a kubeadm that did not complete left its files (a join or init cut short or failed).
kubeadm_leftovers() {
    [ -e /etc/kubernetes/kubelet.conf ] || [ -e /etc/kubernetes/admin.conf ] ||
        [ -n "$(ls -A /etc/kubernetes/manifests 2>/dev/null)" ]
}

# kubeadm_reset STEP: `kubeadm reset -f`, and what it leaves behind (CNI configuration, the lab user's
# kubeconfig, iptables rules).
kubeadm_reset() {
    echo "labctl: an earlier kubeadm run did not complete: kubeadm reset, then what reset leaves behind"
    must "$1" kubeadm reset -f --cri-socket "$CRI_SOCKET"
    rm -rf /etc/cni/net.d/* "$LABCTL_STATE_DIR/done/cni" "$LABCTL_STATE_DIR/done/kubeconfig"
    _home=$(getent passwd "$LAB_USER" | cut -d: -f6)
    [ -z "$_home" ] || rm -f "$_home/.kube/config"
    if have iptables; then
        { iptables -F && iptables -t nat -F && iptables -t mangle -F && iptables -X; } || true
    fi
}

# kubeadm_pki STEP: on masters, the lab's CAs and service-account keys (from the seed) where kubeadm
# expects them, before every run: `kubeadm reset` removes them.
kubeadm_pki() {
    [ -d "$SEED_PKI" ] || return 0
    must "$1" install -d -m 0755 "$KUBE_PKI" "$KUBE_PKI/etcd"
    must "$1" cp -pR "$SEED_PKI/." "$KUBE_PKI/"
}

# kubeadm_run STEP SUBCOMMAND: `kubeadm init|join --config`, bounded by KUBEADM_TIMEOUT; done once it
# returned 0 (a marker); a failure is one line with the tail of kubeadm's output.
kubeadm_run() {
    if [ -e "$KUBEADM_DONE" ]; then
        echo "labctl: kubeadm $2 completed on an earlier boot"
        return 0
    fi
    _attempt=$(($(cat "$KUBEADM_ATTEMPTS" 2>/dev/null || echo 0) + 1))
    if [ "$_attempt" -gt 1 ] || kubeadm_leftovers; then
        kubeadm_reset "$1"
    fi
    kubeadm_pki "$1"
    mkdir -p "$LABCTL_STATE_DIR"
    printf '%s\n' "$_attempt" >"$KUBEADM_ATTEMPTS"
    _log=$LABCTL_STATE_DIR/kubeadm-$2.log
    _status=0
    timeout "$KUBEADM_TIMEOUT" kubeadm "$2" --config "$KUBEADM_CONFIG" >"$_log" 2>&1 || _status=$?
    cat "$_log"
    if [ "$_status" -eq 0 ]; then
        : >"$KUBEADM_DONE"
        return 0
    fi
    _tail=$(grep -v '^[[:space:]]*$' "$_log" | tail -n 1 | cut -c1-300)
    [ "$_status" -ne 124 ] || _tail="timed out after $KUBEADM_TIMEOUT s; $_tail"
    if [ "$_attempt" -lt 2 ]; then
        fail "$1" "kubeadm $2 exited $_status (attempt 1 of 2; the next boot resets and retries): $_tail"
    fi
    fail "$1" "kubeadm $2 exited $_status (attempt $_attempt of 2): $_tail"
}
