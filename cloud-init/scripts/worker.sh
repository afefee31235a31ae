# shellcheck shell=sh
# A worker joins once the API endpoint (the load balancer or the VIP) answers /readyz.

worker_main() {
    k8s_prepare
    step wait-api worker_wait_api
    step kubeadm-join worker_join
}

worker_wait_api() {
    wait_until wait-api "$API_WAIT" "$API_DEPENDS" "the API endpoint ($API_NAME:$API_PORT) did not answer /readyz" \
        readyz "$API_NAME"
}

worker_join() {
    kubeadm_run kubeadm-join join
}
