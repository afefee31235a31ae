# shellcheck shell=sh
# A load balancer: HAProxy in front of every master's apiserver; with two load balancers,
# keepalived holds the API VIP. Staged configuration: /etc/labctl/{haproxy,keepalived}.conf.

lb_main() {
    step network wait_for_lab_dns
    step packages lb_packages
    step haproxy lb_haproxy
    if [ "$KEEPALIVED" = yes ]; then
        step keepalived lb_keepalived
    fi
}

lb_packages() {
    if [ "$KEEPALIVED" = yes ]; then
        installed haproxy keepalived || apt_install packages haproxy keepalived
    else
        installed haproxy || apt_install packages haproxy
    fi
}

lb_haproxy() {
    must haproxy haproxy -c -q -f /etc/labctl/haproxy.cfg
    # 0600: the file holds the stats password; HAProxy reads it as root before dropping privileges.
    must haproxy install -m 0600 /etc/labctl/haproxy.cfg /etc/haproxy/haproxy.cfg
    service_up haproxy haproxy.service
}

lb_keepalived() {
    must keepalived keepalived -t -f /etc/labctl/keepalived.conf
    must keepalived install -d -m 0755 /etc/keepalived
    must keepalived install -m 0600 /etc/labctl/keepalived.conf /etc/keepalived/keepalived.conf
    service_up keepalived keepalived.service
}
