# shellcheck shell=sh
# labctl bootstrap library: phases, resumable steps, failures, bounded waits, package installs.
# Sourced by `bootstrap` after the env file; every parameter comes from that file.
#
#   phase NAME         record NAME in $LABCTL_STATE_DIR/phase (and this boot's $LABCTL_RUN_DIR/phase),
#                      print `labctl-phase: NODE NAME`
#   step NAME FUNC     run FUNC as phase NAME, unless an earlier run of the bootstrap completed it
#   fail STEP MESSAGE  record `failed STEP` and MESSAGE, print `labctl-error: NODE STEP: MESSAGE` and
#                      `labctl-phase: NODE failed STEP`, exit 1 (while the node shuts down: only exit)
#   must STEP CMD...   run CMD; fail STEP naming CMD if it fails
#   wait_for TRIES DELAY CMD...  run CMD until it succeeds, at most TRIES times, DELAY s apart
#   wait_until STEP SECONDS DEPENDS WHAT CMD...  run CMD until it succeeds, for at most SECONDS; stop at
#                      once when a node of DEPENDS (NAME@ADDRESS,...) says on its beacon that it failed
#   on_exit            EXIT trap: a command that stopped the script under `set -e` fails the phase

: "${NODE:?NODE is missing from the env file}"
LABCTL_STATE_DIR=${LABCTL_STATE_DIR:-/var/lib/labctl}
LABCTL_RUN_DIR=${LABCTL_RUN_DIR:-/run/labctl}
LABCTL_CONSOLE=${LABCTL_CONSOLE:-/dev/ttyS0}
LABCTL_PHASE=start
LABCTL_FAILED=
WAIT_DELAY=${WAIT_DELAY:-5}
APT_LOCK_WAIT=${APT_LOCK_WAIT:-300}
APT_TRIES=${APT_TRIES:-3}
APT_OPTIONS="-q -o DPkg::Lock::Timeout=$APT_LOCK_WAIT -o Acquire::Retries=3 -o Acquire::http::Timeout=30 -o Acquire::Languages=none"
POLICY_RC=${POLICY_RC:-/usr/sbin/policy-rc.d}
APT_ETC=${APT_ETC:-/etc/apt}
OS_RELEASE=${OS_RELEASE:-/etc/os-release}
POLICY_MARK="# labctl: no daemon starts while its package installs"

# report LINE: to stdout (the unit's journal and console) and to the serial console the host reads.
report() {
    printf '%s\n' "$1"
    # A node without a serial console still boots; only the host's progress view loses the line.
    if [ -w "$LABCTL_CONSOLE" ]; then
        printf '%s\n' "$1" >>"$LABCTL_CONSOLE" 2>/dev/null || true
    fi
}

record_phase() {
    mkdir -p "$LABCTL_STATE_DIR"
    printf '%s\n' "$1" >"$LABCTL_STATE_DIR/phase.tmp"
    mv -f "$LABCTL_STATE_DIR/phase.tmp" "$LABCTL_STATE_DIR/phase"
    record_boot_phase "$1"
}

# record_boot_phase PHASE: the phase as of this boot, in /run (empty at every boot until the bootstrap
# writes it). The host reads it over ssh where it cannot read the console, and other nodes read the
# beacon's copy, so a phase left by an earlier boot never counts.
record_boot_phase() {
    {
        mkdir -p "$LABCTL_RUN_DIR/beacon" &&
            printf '%s\n' "$1" >"$LABCTL_RUN_DIR/phase" &&
            printf '%s\n' "$1" >"$LABCTL_RUN_DIR/beacon/phase"
    } 2>/dev/null || true
}

phase() {
    LABCTL_PHASE=$1
    record_phase "$1"
    report "labctl-phase: $NODE $1"
}

# step NAME FUNC: a resumable step. Its marker is written once FUNC returned, so a boot cut short
# (`labctl stop`, a host reboot) resumes at the first step that did not complete.
step() {
    if [ -e "$LABCTL_STATE_DIR/done/$1" ]; then
        return 0
    fi
    phase "$1"
    "$2"
    mkdir -p "$LABCTL_STATE_DIR/done"
    : >"$LABCTL_STATE_DIR/done/$1"
}

# stopping: systemd is stopping the bootstrap (the unit's ExecStop made this mark): a step cut
# short by a shutdown is not a failure, the next boot resumes it.
stopping() {
    [ -e "$LABCTL_RUN_DIR/stopping" ]
}

fail() {
    _fail_step=$1
    shift
    LABCTL_FAILED=yes
    if stopping; then
        report "labctl: $NODE: $_fail_step interrupted by a shutdown; the next boot resumes it"
        exit 1
    fi
    printf 'labctl: %s: %s failed: %s\n' "$NODE" "$_fail_step" "$*" >&2
    mkdir -p "$LABCTL_STATE_DIR"
    printf '%s\n' "$*" >"$LABCTL_STATE_DIR/error" || true
    report "labctl-error: $NODE $_fail_step: $*"
    record_phase "failed $_fail_step" || true
    report "labctl-phase: $NODE failed $_fail_step"
    exit 1
}

on_exit() {
    _exit_status=$?
    if [ "$_exit_status" -ne 0 ] && [ -z "$LABCTL_FAILED" ]; then
        trap - EXIT
        fail "$LABCTL_PHASE" "a command exited $_exit_status (see journalctl -u labctl-bootstrap)"
    fi
}

current_phase() {
    cat "$LABCTL_STATE_DIR/phase" 2>/dev/null || true
}

must() {
    _must_step=$1
    shift
    "$@" || fail "$_must_step" "'$*' exited $?"
}

wait_for() {
    _wait_tries=$1
    _wait_delay=$2
    shift 2
    _wait_n=1
    until "$@"; do
        if [ "$_wait_n" -ge "$_wait_tries" ]; then
            return 1
        fi
        _wait_n=$((_wait_n + 1))
        sleep "$_wait_delay"
    done
}

uptime_seconds() {
    cut -d. -f1 /proc/uptime
}

# peer_phase ADDRESS: what the node at ADDRESS says on its beacon this boot ("" when it cannot be asked).
peer_phase() {
    python3 - "$1" "$BEACON_PORT" 2>/dev/null <<'EOF' || true
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://{sys.argv[1]}:{sys.argv[2]}/phase", timeout=3) as reply:
        print(reply.read(200).decode("ascii", "replace").strip())
except Exception:
    pass
EOF
}

# failed_dependency DEPENDS: "NAME, which failed at STEP" for the first node of DEPENDS that failed.
failed_dependency() {
    _deps=$1
    while [ -n "$_deps" ]; do
        _dep=${_deps%%,*}
        case $_deps in *,*) _deps=${_deps#*,} ;; *) _deps= ;; esac
        _peer=$(peer_phase "${_dep#*@}")
        case $_peer in
        "failed "*)
            printf '%s, which failed at %s\n' "${_dep%%@*}" "${_peer#failed }"
            return 0
            ;;
        esac
    done
}

dependency_names() {
    printf '%s\n' "$1" | sed 's/@[^,]*//g; s/,/, /g'
}

wait_until() {
    _wu_step=$1
    _wu_seconds=$2
    _wu_deps=$3
    _wu_what=$4
    shift 4
    _wu_end=$(($(uptime_seconds) + _wu_seconds))
    until "$@"; do
        _wu_failed=$(failed_dependency "$_wu_deps")
        [ -z "$_wu_failed" ] || fail "$_wu_step" "$_wu_what: waiting for node $_wu_failed"
        [ "$(uptime_seconds)" -lt "$_wu_end" ] ||
            fail "$_wu_step" "$_wu_what after $_wu_seconds s (waiting for $(dependency_names "$_wu_deps"))"
        sleep "$WAIT_DELAY"
    done
}

# beacon_start / beacon_stop: serve this boot's phase to the other nodes (labctl-beacon.service).
beacon_start() {
    record_boot_phase "$(current_phase)"
    systemctl start labctl-beacon.service 2>/dev/null || echo "labctl: the phase beacon did not start"
}

beacon_stop() {
    systemctl stop labctl-beacon.service 2>/dev/null || true
}

# kubeadm_retry_due STEP: STEP is a kubeadm step that failed once; the next boot resets and retries it.
kubeadm_retry_due() {
    case $1 in
    kubeadm-init | kubeadm-join)
        [ "$(cat "$LABCTL_STATE_DIR/kubeadm.attempts" 2>/dev/null || echo 0)" -lt 2 ]
        ;;
    *) return 1 ;;
    esac
}

# tcp_open HOST PORT: something accepts TCP connections there.
tcp_open() {
    python3 - "$1" "$2" 2>/dev/null <<'EOF'
import socket, sys
socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
EOF
}

# have CMD...: every command is on the PATH (a pre-baked image already carries them).
have() {
    for _have_cmd in "$@"; do
        command -v "$_have_cmd" >/dev/null 2>&1 || return 1
    done
}

# installed PACKAGE...: every PACKAGE is installed and configured (dpkg's "ii"), as in an image that
# pre-bakes them. A boot cut short inside apt-get leaves packages unpacked but not configured: those
# go through apt_install again (which finishes dpkg's work first). A policy-rc.d labctl left behind
# is removed either way.
installed() {
    policy_rc_remove
    for _installed_pkg in "$@"; do
        case $(dpkg-query -W -f='${db:Status-Abbrev}' "$_installed_pkg" 2>/dev/null) in
        ii*) ;;
        *) return 1 ;;
        esac
    done
}

# apt_sources STEP: with a lab mirror, apt reads it alone. The image's own sources (Debian's cloud
# images: deb822 over mirror lists, kept by cloud-init's preserve_sources_list) move aside to
# /etc/apt/labctl-aside, and labctl.sources names the mirror for this node's Debian release.
apt_sources() {
    [ -n "$APT_MIRROR" ] || return 0
    # shellcheck source=/dev/null
    _suite=$(. "$OS_RELEASE" && printf '%s' "${VERSION_CODENAME:-}")
    [ -n "$_suite" ] || fail "$1" "no VERSION_CODENAME in $OS_RELEASE: which Debian release is this?"
    _suites=$_suite
    [ "$APT_MIRROR_UPDATES" != yes ] || _suites="$_suite $_suite-updates"
    must "$1" mkdir -p "$APT_ETC/labctl-aside" "$APT_ETC/sources.list.d"
    for _source in "$APT_ETC/sources.list" "$APT_ETC"/sources.list.d/*.list "$APT_ETC"/sources.list.d/*.sources; do
        case $_source in */labctl.sources | */kubernetes.list) continue ;; esac
        [ -e "$_source" ] || continue
        must "$1" mv -f "$_source" "$APT_ETC/labctl-aside/"
    done
    {
        printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
            "$APT_MIRROR" "$_suites" /usr/share/keyrings/debian-archive-keyring.gpg
        if [ -n "$APT_SECURITY_MIRROR" ]; then
            printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: %s\n' \
                "$APT_SECURITY_MIRROR" "$_suite" /usr/share/keyrings/debian-archive-keyring.gpg
        fi
    } >"$APT_ETC/sources.list.d/labctl.sources" || fail "$1" "cannot write $APT_ETC/sources.list.d/labctl.sources"
}

# apt_missing_suite LOG: "MIRROR SUITE" when apt-get update found no Release file for a suite (a 404).
apt_missing_suite() {
    sed -n "s/^E: The repository '\([^ ]*\) \([^ ]*\) Release' does not have a Release file.*/\1 \2/p" "$1" |
        head -n 1
}

# apt_update STEP: apt-get update, waiting out the lists lock (unattended-upgrades at first boot) and
# transient errors a bounded number of times; a mirror without a suite is a one-line failure at once.
apt_update() {
    _apt_log=$LABCTL_RUN_DIR/apt-update.log
    mkdir -p "$LABCTL_RUN_DIR"
    _apt_n=1
    _apt_tries=$((APT_LOCK_WAIT / 10 + APT_TRIES))
    # shellcheck disable=SC2086 # APT_OPTIONS is a list of options
    until apt-get $APT_OPTIONS update >"$_apt_log" 2>&1 && ! grep -q '^[WE]: Failed to fetch' "$_apt_log"; do
        cat "$_apt_log"
        _missing=$(apt_missing_suite "$_apt_log")
        if [ -n "$_missing" ]; then
            fail "$1" "the mirror ${_missing% *} has no suite ${_missing#* } (its Release file: 404)"
        fi
        if [ "$_apt_n" -ge "$_apt_tries" ]; then
            fail "$1" "apt-get update failed $_apt_n times: $(grep '^E:' "$_apt_log" | tail -n 1)"
        fi
        echo "labctl: apt-get update failed (try $_apt_n of $_apt_tries); again in 10 s"
        _apt_n=$((_apt_n + 1))
        sleep 10
    done
    cat "$_apt_log"
}

# apt_install STEP PACKAGE...: install from the node's sources (the lab mirror's, if any). No daemon
# starts while its package installs (policy-rc.d): each role puts its configuration in place first,
# then starts it. dpkg's lock is waited for (APT_LOCK_WAIT s, logged by apt), and an install an
# earlier boot cut short is finished first. --force-confold keeps configuration already in place.
apt_install() {
    _apt_step=$1
    shift
    export DEBIAN_FRONTEND=noninteractive
    apt_sources "$_apt_step"
    echo "labctl: installing $*; waiting up to $APT_LOCK_WAIT s for dpkg's lock if another apt holds it"
    dpkg --configure -a || true
    apt_update "$_apt_step"
    if [ ! -e "$POLICY_RC" ]; then
        { printf '#!/bin/sh\n%s\nexit 101\n' "$POLICY_MARK" >"$POLICY_RC" && chmod 0755 "$POLICY_RC"; } ||
            fail "$_apt_step" "cannot write $POLICY_RC"
    fi
    # shellcheck disable=SC2086
    if ! wait_for "$APT_TRIES" 10 apt-get $APT_OPTIONS -y --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold install "$@"; then
        policy_rc_remove
        fail "$_apt_step" "apt-get install $* failed $APT_TRIES times"
    fi
    policy_rc_remove
}

policy_rc_remove() {
    if grep -qs "^$POLICY_MARK" "$POLICY_RC"; then
        rm -f "$POLICY_RC"
    fi
}

# service_up STEP UNIT: enable UNIT, (re)start it, and wait until systemd reports it active.
service_up() {
    must "$1" systemctl enable "$2"
    must "$1" systemctl restart "$2"
    wait_for 15 2 systemctl is-active --quiet "$2" || fail "$1" "$2 is not active after 30 s"
}

resolves() {
    getent hosts "$1" >/dev/null
}

# wait_for_lab_dns: the gateway's dnsmasq answers for the lab (so the gateway routes, too).
wait_for_lab_dns() {
    wait_until network "$DNS_WAIT" "$DNS_DEPENDS" "$API_NAME does not resolve via the gateway $GATEWAY_ADDRESS" \
        resolves "$API_NAME"
}
