# shellcheck shell=sh
# The gateway: routes and masquerades the internal network to its NAT uplink, answers DNS for
# the lab and forwards the rest upstream. Staged configuration: /etc/labctl/{nftables,dnsmasq}.conf.

gateway_main() {
    phase packages
    if ! have nft dnsmasq; then
        apt_install packages nftables dnsmasq
    fi

    phase forwarding
    must forwarding sysctl -q -p /etc/sysctl.d/90-labctl-gateway.conf
    [ "$(cat /proc/sys/net/ipv4/ip_forward)" = 1 ] || fail forwarding "net.ipv4.ip_forward is not 1"

    phase firewall
    must firewall nft -c -f /etc/labctl/nftables.conf
    must firewall install -m 0644 /etc/labctl/nftables.conf /etc/nftables.conf
    must firewall nft -f /etc/nftables.conf
    # nftables.service loads /etc/nftables.conf again at every boot.
    must firewall systemctl enable nftables.service

    phase dns
    must dns dnsmasq --test --conf-file=/etc/labctl/dnsmasq.conf
    must dns install -m 0644 /etc/labctl/dnsmasq.conf /etc/dnsmasq.d/labctl.conf
    service_up dns dnsmasq.service
}
