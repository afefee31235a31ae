#!/bin/sh
# Last touches to a labctl image (labctl/imagebuild.py). mmdebstrap's customize hook copies this
# script into the image's /tmp and runs it there under chroot, so every path below is the image's
# own. It takes no parameters: the files that differ between builds are written by labctl into the
# same overlay, as data.
set -eu

# Every VM gets its own SSH host keys: cloud-init's ssh module makes them at first boot, before
# sshd starts.
rm -f /etc/ssh/ssh_host_*

# An empty machine-id makes systemd generate a fresh one at first boot.
: >/etc/machine-id
rm -f /var/lib/dbus/machine-id

# No root password: logins go through the users and keys that cloud-init installs.
passwd --lock root >/dev/null

# A login prompt on the serial console that the kernel command line names (console=ttyS0).
systemctl enable serial-getty@ttyS0.service

# Name resolution through systemd-resolved, as in Debian's cloud images; netplan (written by
# cloud-init from the seed's network-config) feeds it the DNS servers.
systemctl enable systemd-resolved.service
ln -sf ../run/systemd/resolve/stub-resolv.conf /etc/resolv.conf

# Daemons that a role starts itself (service_up in cloud-init/scripts/lib.sh enables and starts
# them) stay off in the image when pre-baked with --include: otherwise every node would run them,
# and dnsmasq would compete with systemd-resolved for port 53.
for unit in dnsmasq.service haproxy.service keepalived.service containerd.service kubelet.service etcd.service; do
    if [ -e "/usr/lib/systemd/system/$unit" ] || [ -e "/lib/systemd/system/$unit" ]; then
        systemctl disable --quiet "$unit"
    fi
done

# Fail the build here rather than at first boot if cloud-init was left disabled.
test ! -e /etc/cloud/cloud-init.disabled
systemctl is-enabled cloud-init-local.service >/dev/null
