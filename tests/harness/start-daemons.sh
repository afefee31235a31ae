#!/bin/bash
# Start a private virtlogd + libvirtd. Run as root inside
#   ip netns exec NS unshare --mount --propagation private -- start-daemons.sh ENV_FILE
# so every mount below stays in this private mount namespace, which lives on
# as long as the daemons do. ENV_FILE holds KEY=VALUE lines (absolute paths);
# values are read as data, never evaluated as shell text.
set -euo pipefail

die() {
    echo "start-daemons: $*" >&2
    exit 1
}

read_env() {
    local key value
    while IFS='=' read -r key value; do
        case "$key" in
            LIBVIRT_ETC) LIBVIRT_ETC=$value ;;
            LIBVIRT_RUN) LIBVIRT_RUN=$value ;;
            LIBVIRT_LIB) LIBVIRT_LIB=$value ;;
            LIBVIRT_LOG) LIBVIRT_LOG=$value ;;
            LIBVIRT_CACHE) LIBVIRT_CACHE=$value ;;
            DEV_STAGE) DEV_STAGE=$value ;;
            VIRTLOGD_CONF) VIRTLOGD_CONF=$value ;;
            VIRTLOGD_PID) VIRTLOGD_PID=$value ;;
            LIBVIRTD_CONF) LIBVIRTD_CONF=$value ;;
            LIBVIRTD_PID) LIBVIRTD_PID=$value ;;
            PASSWD_FILE) PASSWD_FILE=$value ;;
            GROUP_FILE) GROUP_FILE=$value ;;
            '') ;;
            *) die "unknown key in env file: $key" ;;
        esac
    done <"$1"
    : "${LIBVIRT_ETC:?}" "${LIBVIRT_RUN:?}" "${LIBVIRT_LIB:?}" "${LIBVIRT_LOG:?}"
    : "${LIBVIRT_CACHE:?}" "${DEV_STAGE:?}" "${VIRTLOGD_CONF:?}" "${VIRTLOGD_PID:?}"
    : "${LIBVIRTD_CONF:?}" "${LIBVIRTD_PID:?}" "${PASSWD_FILE:?}" "${GROUP_FILE:?}"
}

bind_over() {
    # Mount points that do not exist yet are created (empty) on the host's
    # filesystem; that is all a private mount namespace cannot avoid.
    mkdir -p "$2"
    mount --bind "$1" "$2"
}

# A /dev without kvm (and without disks, loop devices, consoles): the
# daemons and their qemu see only what a TCG guest and its tap NICs need.
# libvirtd would otherwise open /dev/kvm while probing qemu's capabilities.
private_dev() {
    local stage=$1 node
    mount -t tmpfs -o mode=0755,nosuid tmpfs "$stage"
    mkdir "$stage/net" "$stage/pts" "$stage/shm"
    for node in null zero full random urandom tty net/tun; do
        touch "$stage/$node"
        mount --bind "/dev/$node" "$stage/$node"
    done
    # Guests' serial ptys come from a devpts instance of our own.
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$stage/pts"
    ln -s pts/ptmx "$stage/ptmx"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$stage/shm"
    ln -s /proc/self/fd "$stage/fd"
    ln -s /proc/self/fd/0 "$stage/stdin"
    ln -s /proc/self/fd/1 "$stage/stdout"
    ln -s /proc/self/fd/2 "$stage/stderr"
    mount --move "$stage" /dev
}

main() {
    [ "$#" -eq 1 ] || die "usage: start-daemons.sh ENV_FILE"
    read_env "$1"
    private_dev "$DEV_STAGE"
    bind_over "$LIBVIRT_ETC" /etc/libvirt
    bind_over "$LIBVIRT_RUN" /run/libvirt
    bind_over "$LIBVIRT_LIB" /var/lib/libvirt
    bind_over "$LIBVIRT_LOG" /var/log/libvirt
    bind_over "$LIBVIRT_CACHE" /var/cache/libvirt
    # Copies with the libvirt-qemu account Debian's libvirtd insists on.
    mount --bind "$PASSWD_FILE" /etc/passwd
    mount --bind "$GROUP_FILE" /etc/group
    # Both fork into the background and return once initialised.
    virtlogd --daemon --config "$VIRTLOGD_CONF" --pid-file "$VIRTLOGD_PID"
    # --listen: also TCP on the namespace's 127.0.0.1 (libvirtd.conf), as a remote hypervisor would.
    libvirtd --daemon --listen --config "$LIBVIRTD_CONF" --pid-file "$LIBVIRTD_PID"
}

main "$@"
