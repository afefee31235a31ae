# shellcheck shell=sh
# What masters and workers share: kernel settings, containerd with the systemd cgroup driver,
# kubelet/kubeadm/kubectl pinned and held, and the bounded /readyz probe.

K8S_KEYRING=/etc/apt/keyrings/kubernetes-apt-keyring.asc
K8S_SOURCES=/etc/apt/sources.list.d/kubernetes.list
CONTAINERD_CONFIG=/etc/containerd/config.toml

k8s_prepare() {
    phase network
    wait_for_lab_dns

    phase kernel
    must kernel modprobe overlay
    must kernel modprobe br_netfilter
    must kernel sysctl -q -p /etc/sysctl.d/90-labctl-k8s.conf

    phase packages
    if have containerd kubelet kubeadm kubectl curl; then
        echo "labctl: containerd and the Kubernetes tools are already installed (pre-baked image)"
    else
        k8s_install
    fi

    phase containerd
    k8s_containerd
}

k8s_install() {
    have curl || apt_install packages curl ca-certificates
    must packages install -d -m 0755 /etc/apt/keyrings
    # An armored key with the .asc suffix works as signed-by without gpg on the image.
    must packages curl --fail --silent --show-error --location --max-time 60 --retry 5 --retry-delay 5 \
        -o "$K8S_KEYRING" "${K8S_APT_URL}Release.key"
    must packages chmod 0644 "$K8S_KEYRING"
    printf 'deb [signed-by=%s] %s /\n' "$K8S_KEYRING" "$K8S_APT_URL" >"$K8S_SOURCES" ||
        fail packages "cannot write $K8S_SOURCES"
    # K8S_PKG_VERSION ends in "." or "-": the glob picks the newest build of the pinned version.
    apt_install packages containerd conntrack \
        "kubelet=${K8S_PKG_VERSION}*" "kubeadm=${K8S_PKG_VERSION}*" "kubectl=${K8S_PKG_VERSION}*"
    must packages apt-mark hold kubelet kubeadm kubectl
}

k8s_containerd() {
    if ! grep -qs 'SystemdCgroup = true' "$CONTAINERD_CONFIG"; then
        must containerd install -d -m 0755 /etc/containerd
        containerd config default >"$CONTAINERD_CONFIG.labctl" ||
            fail containerd "containerd config default failed"
        must containerd sed -i 's/SystemdCgroup = false/SystemdCgroup = true/' "$CONTAINERD_CONFIG.labctl"
        grep -q 'SystemdCgroup = true' "$CONTAINERD_CONFIG.labctl" ||
            fail containerd "no SystemdCgroup setting in containerd's default configuration"
        must containerd mv -f "$CONTAINERD_CONFIG.labctl" "$CONTAINERD_CONFIG"
    fi
    service_up containerd containerd.service
    wait_for 30 2 test -S /run/containerd/containerd.sock ||
        fail containerd "no containerd socket after 60 s"
    must containerd systemctl enable kubelet.service
}

# readyz HOST: the apiserver at HOST answers /readyz over TLS verified with the cluster CA.
readyz() {
    curl --fail --silent --show-error --max-time 10 --cacert "$API_CA" "https://$1:$API_PORT/readyz" >/dev/null
}

# wait_for_apiserver STEP HOST WHAT: bounded wait for readyz HOST.
wait_for_apiserver() {
    wait_for "$API_WAIT_TRIES" "$API_WAIT_DELAY" readyz "$2" ||
        fail "$1" "$3 ($2:$API_PORT) did not answer /readyz in $API_WAIT_TRIES tries $API_WAIT_DELAY s apart"
}

# kubeadm_run STEP SUBCOMMAND: `kubeadm init|join --config` once, bounded by KUBEADM_TIMEOUT.
kubeadm_run() {
    if [ -f /etc/kubernetes/kubelet.conf ]; then
        echo "labctl: /etc/kubernetes/kubelet.conf exists; kubeadm $2 already ran"
        return 0
    fi
    must "$1" timeout "$KUBEADM_TIMEOUT" kubeadm "$2" --config "$KUBEADM_CONFIG"
}
