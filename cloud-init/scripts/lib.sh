# shellcheck shell=sh
# labctl bootstrap library: phase reporting, failures, bounded waits, package installs.
# Sourced by `bootstrap` after the env file; every parameter comes from that file.
#
#   phase NAME         record NAME in $LABCTL_STATE_DIR/phase (and this boot's $LABCTL_RUN_DIR/phase),
#                      print `labctl-phase: NODE NAME`
#   fail STEP MESSAGE  record `failed STEP`, print `labctl-phase: NODE failed STEP`, exit 1
#   must STEP CMD...   run CMD; fail STEP naming CMD if it fails
#   wait_for TRIES DELAY CMD...  run CMD until it succeeds, at most TRIES times, DELAY s apart
#   on_exit            EXIT trap: a command that stopped the script under `set -e` fails the phase

: "${NODE:?NODE is missing from the env file}"
LABCTL_STATE_DIR=${LABCTL_STATE_DIR:-/var/lib/labctl}
LABCTL_RUN_DIR=${LABCTL_RUN_DIR:-/run/labctl}
LABCTL_CONSOLE=${LABCTL_CONSOLE:-/dev/ttyS0}
LABCTL_PHASE=start
LABCTL_FAILED=
APT_OPTIONS="-q -o DPkg::Lock::Timeout=300 -o Acquire::Retries=3 -o Acquire::http::Timeout=30"

# report LINE: to stdout (cloud-init-output.log) and to the serial console the host reads.
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
# or the boot-time announcer writes it). The host reads this one over ssh where it cannot read the
# console, so a phase left by an earlier boot never counts.
record_boot_phase() {
    { mkdir -p "$LABCTL_RUN_DIR" && printf '%s\n' "$1" >"$LABCTL_RUN_DIR/phase"; } 2>/dev/null || true
}

phase() {
    LABCTL_PHASE=$1
    record_phase "$1"
    report "labctl-phase: $NODE $1"
}

fail() {
    _fail_step=$1
    shift
    LABCTL_FAILED=yes
    printf 'labctl: %s: %s failed: %s\n' "$NODE" "$_fail_step" "$*" >&2
    report "labctl-error: $NODE $_fail_step: $*"
    record_phase "failed $_fail_step" || true
    report "labctl-phase: $NODE failed $_fail_step"
    exit 1
}

on_exit() {
    _exit_status=$?
    if [ "$_exit_status" -ne 0 ] && [ -z "$LABCTL_FAILED" ]; then
        trap - EXIT
        fail "$LABCTL_PHASE" "a command exited $_exit_status (see /var/log/cloud-init-output.log)"
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

# have CMD...: every command is on the PATH (a pre-baked image already carries them).
have() {
    for _have_cmd in "$@"; do
        command -v "$_have_cmd" >/dev/null 2>&1 || return 1
    done
}

# apt_install STEP PACKAGE...: from the image's apt sources (or the lab's mirror cloud-init set up).
# --force-confold keeps configuration labctl may already have put in place.
apt_install() {
    _apt_step=$1
    shift
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086 # APT_OPTIONS is a list of options
    wait_for 5 10 apt-get $APT_OPTIONS update ||
        fail "$_apt_step" "apt-get update failed 5 times"
    # shellcheck disable=SC2086
    wait_for 3 10 apt-get $APT_OPTIONS -y --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold install "$@" ||
        fail "$_apt_step" "apt-get install $* failed 3 times"
}

# service_up STEP UNIT: enable UNIT, (re)start it, and wait until systemd reports it active.
service_up() {
    must "$1" systemctl enable "$2"
    must "$1" systemctl restart "$2"
    wait_for 15 2 systemctl is-active --quiet "$2" || fail "$1" "$2 is not active after 30 s"
}

# wait_for_lab_dns: the gateway's dnsmasq answers for the lab (so the gateway routes, too).
wait_for_lab_dns() {
    wait_for "$NETWORK_WAIT_TRIES" 5 getent hosts "$API_NAME" >/dev/null ||
        fail network "$API_NAME does not resolve via the gateway $GATEWAY_ADDRESS after $NETWORK_WAIT_TRIES tries"
}
