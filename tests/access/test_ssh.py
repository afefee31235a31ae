"""ssh argument lists, the lab's known_hosts and ssh configs. Nothing here connects anywhere."""

import shutil
import stat
import subprocess
from ipaddress import IPv4Address

import pytest

from labctl.access import ssh as access
from labctl.errors import ConfigError, LabError, StateError
from labctl.lab.state import LabState
from labctl.pki.secrets import ensure_secrets, known_hosts_lines


@pytest.fixture(scope="module")
def lab_files(plan, tmp_path_factory):
    """A state dir with the lab's secrets, its known_hosts and its -F ssh config (made once: RSA keys are slow)."""
    state = LabState.for_lab(plan.lab.name, base=tmp_path_factory.mktemp("data"))
    secrets = ensure_secrets(state, plan)
    access.write_ssh_files(state, plan, secrets)
    return state, secrets


@pytest.fixture
def state(lab_files):
    return lab_files[0]


def ip(plan, name):
    return str(plan.node(name).internal.address.ip)


def pinned(state):
    return ["-o", f"IdentityFile={state.ssh_key_path}", "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={state.root / 'known_hosts'}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"]


def test_known_hosts_pins_every_node_and_is_private(plan, lab_files):
    state, secrets = lab_files
    path = state.root / "known_hosts"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert lines == known_hosts_lines(plan, secrets)
    by_name = {line.split(",")[0]: line for line in lines}
    assert set(by_name) == set(plan.node_names)
    gateway = by_name["gateway"]
    assert access.gateway_address(plan) in gateway.split()[0].split(",")
    assert gateway.split()[1:] == secrets.host_keys["gateway"].public.split()[:2]


def test_interactive_login_on_an_isolated_lab_goes_straight_to_the_internal_address(plan, state):
    argv = access.ssh_argv(plan, state, "master1", [], via_gateway=False)
    assert argv == ["ssh", "-F", str(state.root / "ssh_config"), *pinned(state), "--", f"lab@{ip(plan, 'master1')}"]


def test_a_command_runs_in_batch_mode_after_the_destination(plan, state):
    argv = access.ssh_argv(plan, state, "worker2", ["sudo", "crictl", "ps"], via_gateway=False)
    assert argv[-5:] == ["--", f"lab@{ip(plan, 'worker2')}", "sudo", "crictl", "ps"]
    assert argv[argv.index("BatchMode=yes") - 1] == "-o"
    # No option may follow "--": the command could otherwise be read as ssh options.
    assert argv.index("--") > argv.index("BatchMode=yes")


def test_via_gateway_jumps_through_its_nat_address(plan, state):
    gateway = access.gateway_address(plan)
    assert IPv4Address(gateway) in plan.lab.nat.cidr
    argv = access.ssh_argv(plan, state, "lb1", ["true"], via_gateway=True)
    assert argv[argv.index("-J") + 1] == f"lab@{gateway}"
    assert argv[argv.index("--") + 1] == f"lab@{ip(plan, 'lb1')}"
    # The gateway itself is reached directly, by its NAT address.
    argv = access.ssh_argv(plan, state, "gateway", [], via_gateway=True)
    assert "-J" not in argv and argv[-1] == f"lab@{gateway}"


def test_a_remote_hypervisor_is_the_first_hop(plan, state):
    argv = access.ssh_argv(plan, state, "master2", [], via_gateway=False, first_hop="root@hv.example:2222")
    assert argv[argv.index("-J") + 1] == f"root@hv.example:2222,lab@{access.gateway_address(plan)}"
    argv = access.ssh_argv(plan, state, "gateway", [], via_gateway=True, first_hop="hv")
    assert argv[argv.index("-J") + 1] == "hv" and argv[-1] == f"lab@{access.gateway_address(plan)}"


@pytest.mark.parametrize("hop", ["hv;reboot", "a b", "me@hv,other", "-oProxyCommand=x"])
def test_a_first_hop_is_only_user_host_port(plan, state, hop):
    with pytest.raises(ConfigError, match="--jump"):
        access.ssh_argv(plan, state, "master1", [], via_gateway=True, first_hop=hop)
    with pytest.raises(ConfigError, match="--jump"):
        access.ssh_config_text(plan, state, first_hop=hop)


def test_the_jump_hop_gets_the_lab_key_and_known_hosts_from_the_F_config(plan, state):
    text = (state.root / "ssh_config").read_text()
    assert stat.S_IMODE((state.root / "ssh_config").stat().st_mode) == 0o600
    host_line = next(line for line in text.splitlines() if line.startswith("Host "))
    assert set(host_line.split()[1:]) == {access.gateway_address(plan)} | {ip(plan, n) for n in plan.node_names}
    assert f"    IdentityFile {state.ssh_key_path}" in text
    assert f"    UserKnownHostsFile {state.root / 'known_hosts'}" in text
    assert "    StrictHostKeyChecking yes" in text and "    User lab" in text


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_openssh_reads_our_options_as_meant(plan, tmp_path):
    """`ssh -G` only prints the configuration it would use and exits: no connection, no traffic.
    A state path with a space and a % proves the quoting and escaping."""
    state = LabState.for_lab(plan.lab.name, base=tmp_path / "my labs%h")
    state.ensure()
    (state.root / "ssh_config").write_text(access.jump_config_text(plan, state))
    (state.root / "ssh_config").chmod(0o600)
    argv = access.ssh_argv(plan, state, "master1", ["uptime"], via_gateway=False)
    main = ssh_g(argv[1:])
    assert main["hostname"] == ip(plan, "master1") and main["user"] == "lab"
    assert main["userknownhostsfile"] == str(state.root / "known_hosts")
    assert main["stricthostkeychecking"] == "true" and main["batchmode"] == "yes"
    # What the jump hop runs: ssh -l lab -F <config> -W … <gateway>.
    hop = ssh_g(["-F", str(state.root / "ssh_config"), "-l", "lab", access.gateway_address(plan)])
    assert hop["userknownhostsfile"] == str(state.root / "known_hosts")
    assert hop["identityfile"] == str(state.ssh_key_path).replace("%", "%%")  # expanded when the key is loaded
    assert hop["stricthostkeychecking"] == "true" and hop["identitiesonly"] == "yes"
    assert hop["globalknownhostsfile"] == "/dev/null"
    # A first hop that is not the lab's keeps ssh's defaults.
    assert ssh_g(["-F", str(state.root / "ssh_config"), "root@hv"])["stricthostkeychecking"] != "true"


def ssh_g(args):
    out = subprocess.run(["ssh", "-G", *args], capture_output=True, text=True, timeout=10, check=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def test_a_jump_refuses_a_config_path_ssh_cannot_pass_on(plan, tmp_path):
    state = LabState.for_lab(plan.lab.name, base=tmp_path / "my labs")
    with pytest.raises(StateError, match="jump host"):
        access.ssh_argv(plan, state, "master1", [], via_gateway=True)
    assert access.ssh_argv(plan, state, "master1", [], via_gateway=False)[-1] == f"lab@{ip(plan, 'master1')}"


def test_unknown_node_lists_the_valid_names(plan, state):
    with pytest.raises(ConfigError) as caught:
        access.ssh_argv(plan, state, "mastr1", [], via_gateway=False)
    message = str(caught.value)
    assert "unknown node 'mastr1'" in message and "did you mean 'master1'" in message
    assert "gateway, lb1, master1, master2, master3, worker1, worker2" in message


@pytest.mark.parametrize(("mode_plan", "local", "expected"), [
    ("plan", True, False), ("plan", False, True), ("bridged", True, True), ("bridged", False, True)])
def test_needs_gateway(request, mode_plan, local, expected):
    assert access.needs_gateway(request.getfixturevalue(mode_plan), local) is expected


def blocks(text):
    """Host blocks of an ssh config: alias -> {option: value}."""
    found: dict[str, dict[str, str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("Host "):
            current = found.setdefault(line.split()[1], {})
        elif line.startswith("    ") and current is not None:
            key, value = line.split(None, 1)
            current[key] = value
    return found


def test_ssh_config_host_blocks_for_a_local_isolated_lab(plan, state):
    found = blocks(access.ssh_config_text(plan, state))
    assert list(found) == [f"k8s-{name}" for name in plan.node_names]
    master = found["k8s-master1"]
    assert master == {"HostName": ip(plan, "master1"), "User": "lab", "IdentityFile": str(state.ssh_key_path),
                      "IdentitiesOnly": "yes", "UserKnownHostsFile": str(state.root / "known_hosts"),
                      "GlobalKnownHostsFile": "/dev/null", "StrictHostKeyChecking": "yes", "ConnectTimeout": "10"}
    assert not any("ProxyJump" in block for block in found.values())


def test_ssh_config_jumps_through_the_gateway_alias(plan, state):
    found = blocks(access.ssh_config_text(plan, state, via_gateway=True))
    assert found["k8s-gateway"]["HostName"] == access.gateway_address(plan)
    assert "ProxyJump" not in found["k8s-gateway"]
    assert {found[f"k8s-{n}"]["ProxyJump"] for n in plan.node_names if n != "gateway"} == {"k8s-gateway"}
    remote = blocks(access.ssh_config_text(plan, state, first_hop="root@hv"))
    assert remote["k8s-gateway"]["ProxyJump"] == "root@hv" and remote["k8s-lb1"]["ProxyJump"] == "k8s-gateway"


def test_exec_replaces_the_process_with_ssh(plan, state):
    seen = []
    with pytest.raises(SystemExit):
        access.exec_argv(["ssh", "x"], execvp=lambda file, args: seen.append((file, args)))
    assert seen == [("ssh", ["ssh", "x"])]

    def missing(file, args):
        raise FileNotFoundError(2, "No such file or directory")

    with pytest.raises(LabError, match=r"ssh not found.*openssh-client"):
        access.exec_argv(["ssh"], execvp=missing)


def test_follow_log_prints_then_follows_appends_and_truncation(tmp_path):
    log = tmp_path / "console.log"
    log.write_bytes(b"boot\n")
    out = tmp_path / "out"
    writes = iter([b"cloud-init\n", None, b""])

    def sleep(_seconds):
        data = next(writes)
        if data is None:
            log.write_bytes(b"again\n")  # the node rebooted: a new, shorter log
        else:
            with log.open("ab") as handle:
                handle.write(data)

    with out.open("wb") as handle:
        access.follow_log(log, handle, follow=True, sleep=sleep, polls=3)
    assert out.read_bytes() == b"boot\ncloud-init\nagain\n"
    with out.open("wb") as handle:
        access.follow_log(log, handle, follow=False, sleep=pytest.fail)
    assert out.read_bytes() == b"again\n"
