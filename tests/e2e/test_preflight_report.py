"""How tests/e2e/preflight.py reads kubeadm's preflight output and judges it (no VM: kubeadm's own lines)."""

from __future__ import annotations

from tests.e2e.preflight import Preflight, parse_reports, problems

# kubeadm 1.35.4's output on the apt-path lab's master1, cut down (seen in a run here).
OUTPUT = """\
[preflight] Running pre-flight checks
I1203 17:19:40.101 1345 checks.go:120] validating the container runtime version compatibility
I1203 17:19:40.202 1345 checks.go:364] validating the contents of file /proc/sys/net/ipv4/ip_forward
\t[WARNING NumCPU]: the number of available CPUs 1 is less than the required 2
\t[WARNING Port-6443]: Port 6443 is in use
\t[WARNING ContainerRuntimeVersion]: You must update your container runtime to a version that supports RuntimeConfig
\t[WARNING ImagePull]: failed to pull image registry.k8s.io/kube-apiserver:v1.35.4: lookup failed
\t[WARNING ImagePull]: failed to pull image registry.k8s.io/pause:3.10.1: lookup failed
"""
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
    worse = OUTPUT + "\t[WARNING Swap]: swap is supported for cgroup v2 only\n" \
                     "\t[ERROR FileContent--proc-sys-net-ipv4-ip_forward]: contents are not set to 1\n"
    found = problems(run(worse, exit_code=1))
    assert found == ["exit 1", "ERROR FileContent--proc-sys-net-ipv4-ip_forward: contents are not set to 1",
                     "WARNING Swap: swap is supported for cgroup v2 only"]


def test_an_ignore_or_an_expectation_that_did_not_fire_is_a_problem() -> None:
    quiet = "\n".join(line for line in OUTPUT.splitlines() if "Port-6443" not in line and "Runtime" not in line)
    found = problems(run(quiet))
    assert found == ["ignored Port-6443 did not fire (the stand-in holds it): drop it",
                     "expected ContainerRuntimeVersion did not come (containerd 1.7 has no RuntimeConfig)"]
