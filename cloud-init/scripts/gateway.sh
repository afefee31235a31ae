# shellcheck shell=sh
# The gateway: routes and masquerades the internal network to its NAT uplink, answers DNS for
# the lab and forwards the rest upstream. Staged configuration: /etc/labctl/{nftables,dnsmasq}.conf.
#
# dnsmasq listens on the internal interface's address only (interface=, bind-dynamic), so
# systemd-resolved keeps its stub on 127.0.0.53 and the gateway itself resolves through it as every
# other node does (its internal link asks dnsmasq for lab names, its uplink libvirt for the rest).

gateway_main() {
    step packages gateway_packages
    step forwarding gateway_forwarding
    step firewall gateway_firewall
    step dns gateway_dns
}

gateway_packages() {
    if ! installed nftables dnsmasq; then
        apt_install packages nftables dnsmasq
    fi
}

gateway_forwarding() {
    must forwarding sysctl -q -p /etc/sysctl.d/90-labctl-gateway.conf
    [ "$(cat /proc/sys/net/ipv4/ip_forward)" = 1 ] || fail forwarding "net.ipv4.ip_forward is not 1"
}

gateway_firewall() {
    must firewall nft -c -f /etc/labctl/nftables.conf
    must firewall install -m 0644 /etc/labctl/nftables.conf /etc/nftables.conf
    must firewall nft -f /etc/nftables.conf
    # nftables.service loads /etc/nftables.conf again at every boot.
    must firewall systemctl enable nftables.service
}

gateway_dns() {
    must dns dnsmasq --test --conf-file=/etc/labctl/dnsmasq.conf
    must dns install -m 0644 /etc/labctl/dnsmasq.conf /etc/dnsmasq.d/labctl.conf
    service_up dns dnsmasq.service
}
