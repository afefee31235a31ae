#!/bin/sh
# Hold a private mount namespace in which the VirtualBox chroot can run. Run as root as
#   unshare --mount --propagation private -- vbox-namespace.sh ENV_FILE
# ENV_FILE holds KEY=VALUE lines (absolute paths), read as data, never evaluated as shell text:
#   ROOT  the chroot (Debian sid with virtualbox), shared read-mostly between test runs
#   WORK  the run's work directory, mounted at the same path inside the chroot
# Every mount below lives only in this namespace: a private tmpfs on the chroot's /tmp (VirtualBox's
# IPC sockets, and the mount point of WORK, so the cached chroot is never written to), /proc, /dev
# and /sys, and WORK. Prints "ready" once mounted, then holds the namespace open until its standard
# input closes; the namespace goes away with the last process in it (VBoxSVC lingers a few seconds).
set -eu

die() {
    echo "vbox-namespace: $*" >&2
    exit 1
}

[ "$#" -eq 1 ] || die "usage: vbox-namespace.sh ENV_FILE"
ROOT=
WORK=
while IFS='=' read -r key value; do
    case "$key" in
        ROOT) ROOT=$value ;;
        WORK) WORK=$value ;;
        VBOX_USER_HOME | NAMESPACE_PID | '') ;;
        *) die "unknown key in env file: $key" ;;
    esac
done <"$1"
if [ -z "$ROOT" ] || [ -z "$WORK" ]; then
    die "ROOT and WORK must be set in $1"
fi
[ -x "$ROOT/usr/lib/virtualbox/VBoxManage" ] || die "no VBoxManage in $ROOT"

mount --rbind /proc "$ROOT/proc"
mount --rbind /dev "$ROOT/dev"
mount --rbind /sys "$ROOT/sys"
mount -t tmpfs -o mode=1777 tmpfs "$ROOT/tmp"
mkdir -p "$ROOT$WORK"
mount --bind "$WORK" "$ROOT$WORK"
echo ready
# Block until the harness closes our standard input (or dies).
while read -r _; do :; done
