# shellcheck shell=sh
# A worker joins once the API endpoint (the load balancer or the VIP) answers /readyz.

worker_main() {
    k8s_prepare
    phase wait-api
    wait_for_apiserver wait-api "$API_NAME" "the API endpoint"
    phase kubeadm-join
    kubeadm_run kubeadm-join join
}
