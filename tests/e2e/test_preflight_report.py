"""How tests/e2e/preflight.py reads kubeadm's preflight output and judges it (no VM: kubeadm's own lines)."""

from __future__ import annotations

from pathlib import Path

from labctl.lab.versions import load_versions
from tests.e2e.preflight import Preflight, parse_reports, problems, runtime_expected

# kubeadm 1.35.4's output on the apt-path lab's master1, lines kept verbatim from a run here.
OUTPUT = (Path(__file__).parent / "data" / "kubeadm-1.35.4-preflight-master1.txt").read_text()
IGNORED = {"Port-6443": "the stand-in holds it", "ImagePull": "offline"}
EXPECTED = {"ContainerRuntimeVersion": "containerd 1.7 has no RuntimeConfig"}


def run(output: str, exit_code: int = 0, ignored: dict[str, str] | None = None,
        expected: dict[str, str] | None = None) -> Preflight:
    reports = parse_reports(output)
    return Preflight("master1", ["kubeadm"], exit_code, output, IGNORED if ignored is None else ignored, ["NumCPU"],
                     1.0, EXPECTED if expected is None else expected, reports["WARNING"], reports["ERROR"])


def test_the_reports_are_read_by_level_and_check() -> None:
    reports = parse_reports(OUTPUT)
    assert list(reports["WARNING"]) == ["NumCPU", "Port-6443", "ContainerRuntimeVersion", "ImagePull"]
    assert len(reports["WARNING"]["ImagePull"]) == 2 and reports["ERROR"] == {}
    assert run(OUTPUT).validated == ["validating the container runtime version compatibility",
                                     "validating the contents of file /proc/sys/net/ipv4/ip_forward"]


def test_a_run_whose_every_warning_is_accounted_for_has_no_problem() -> None:
    assert problems(run(OUTPUT)) == []


def test_an_unexplained_warning_an_error_or_a_failure_is_a_problem() -> None:
    # kubeadm's line on master1 with ip_forward turned off (the bite check of tests/e2e/test_aptpath.py)
    worse = OUTPUT + "\t[ERROR FileContent--proc-sys-net-ipv4-ip_forward]: /proc/sys/net/ipv4/ip_forward contents " \
                     "are not set to 1\n"
    found = problems(run(worse, exit_code=1, expected={}))
    assert found[:2] == ["exit 1", "ERROR FileContent--proc-sys-net-ipv4-ip_forward: /proc/sys/net/ipv4/ip_forward "
                                   "contents are not set to 1"]
    assert found[2].startswith("WARNING ContainerRuntimeVersion: You must update your container runtime") and \
        len(found) == 3, found


def test_an_ignore_or_an_expectation_that_did_not_fire_is_a_problem() -> None:
    quiet = "\n".join(line for line in OUTPUT.splitlines() if "Port-6443" not in line and "Runtime" not in line)
    found = problems(run(quiet))
    assert found == ["ignored Port-6443 did not fire (the stand-in holds it): drop it",
                     "expected ContainerRuntimeVersion did not come (containerd 1.7 has no RuntimeConfig)"]


def test_the_runtime_warning_is_expected_only_where_the_version_table_puts_the_runtime_last() -> None:
    table = load_versions()
    assert list(runtime_expected(35, "1.7.24~ds1", table)) == ["ContainerRuntimeVersion"]  # Debian 13's
    assert "containerd 1.7" in runtime_expected(35, "1.7.24~ds1", table)["ContainerRuntimeVersion"]
    assert runtime_expected(35, "v2.1.0", table) == {}  # upstream's containerd 2: RuntimeConfig answered
    assert runtime_expected(35, "2.1.4~ds1", table) == {}  # sid's
    assert runtime_expected(34, "1.7.24~ds1", table) == {}  # 1.35 runs on 1.7 too: 1.34 is not the last
    assert runtime_expected(99, "1.7.24", table) == {}  # a minor the table does not have
