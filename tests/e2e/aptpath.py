"""The second end-to-end lab: the official image's apt path (issue #13), booted once, drilled, then ready.

The nodes boot from a genericcloud-like image (tests/e2e/cloudimage.py: no role daemon,
systemd-resolved and unattended-upgrades enabled, Debian's sources kept by cloud-init) and install
everything at first boot: Debian's packages only through ``apt_mirror``, the package proxy on the
host bridged into the private libvirtd's namespace (tests/harness/aptproxy.py); the Kubernetes
packages (the recording stand-ins as real .debs at the default minor's version) from a signed
repository served inside that namespace (``kubernetes.apt_url``, its key given as a file).

:func:`aptpath_lab` boots gateway, lb1, master1 and worker1 and runs the drills of :data:`STAGES`
against that one boot, in order, recording what each saw (:class:`Drill`); a stage that raises stops
the sequence, and its error is what the tests report. Once the stages are through, the lab is ready:
later checks (issue #18: the real kubeadm's preflight on master1 and worker1) take it as it is, and
issue #16 adds its etcd members through ``EXTRA_NODES``/``extra`` of :func:`lab_text` and its own
stages after :data:`STAGES`.

The drills, from the seeds on (tests/e2e/sabotage.py adds the drills' files to the seeds):

* lb1 is stopped while it installs HAProxy, then started: it resumes at ``packages``;
* worker1 cannot install containerd (an apt pin) and fails at ``packages``; master1's first
  ``kubeadm init`` fails after writing kubelet.conf (the stand-in's switch);
* both are stopped and started: worker1 says its failure again (``start`` fails at once with its line),
  master1 resets and retries its init, and reaches ready;
* the pin goes, ``up --retry-failed``: worker1 installs, waits for the API, its join fails (a switch
  that fails every join); rebooted, it resets and fails again: its own line in ``status`` and ``up``;
* the switch goes, ``up --retry-failed``: the lab is ready;
* ``up`` with the state directory moved away refuses in one line and changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt

from tests.e2e.cloudimage import cloud_image
from tests.e2e.k8srepo import KubernetesRepo, build_repo
from tests.e2e.lab import Lab, NetnsServer, lab_yaml, plan_of, stream
from tests.e2e.session import Session, lab_for, lab_session, serve_cni, served_image
from tests.harness.aptproxy import AptProxy
from tests.httpserver import HTTPTestServer
from tests.labenv import snapshot

LAB = "apt"
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "aptpath"  # consoles and drills, kept after the run
NODES = ("gateway", "lb1", "master1", "worker1")
K8S_PACKAGES = "1.35.0-1.1"  # the default minor's (images/kubernetes.yaml), as upstream numbers them
PROXY_PORT = 3142
REPO_PORT = 18081
WAIT = 3000  # seconds any one `up`/`start` or phase wait of the drills may take (bounded; TCG on two shared cores)
POLL = 1.0
STANDIN_DIR = "/var/lib/labctl-standin"
APT_PIN = "/etc/apt/preferences.d/labctl-e2e-no-containerd"
FAIL_JOIN = f"{STANDIN_DIR}/fail-join"
DRILL_FILES = {
    "worker1": {APT_PIN: "Package: containerd\nPin: version *\nPin-Priority: -1\n",
                FAIL_JOIN: "labctl e2e: every kubeadm join fails while this file exists\n"},
    "master1": {f"{STANDIN_DIR}/fail-init-once": "labctl e2e: the first kubeadm init fails\n"},
}


@dataclass
class Drill:
    """What one stage did and saw."""

    name: str
    seconds: float = 0.0
    seen: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class AptPath:
    lab: Lab
    session: Session
    work: Path
    proxy: AptProxy
    repo: KubernetesRepo
    mirror: str
    apt_url: str
    cni: tuple[str, str]
    drills: dict[str, Drill] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return all(d.error is None for d in self.drills.values()) and len(self.drills) == len(STAGES)

    def drill(self, name: str) -> Drill:
        found = self.drills.get(name)
        if found is None:
            raise AssertionError(f"stage {name} did not run (an earlier one failed: {self.first_error()})")
        if found.error:
            raise AssertionError(f"stage {name} failed: {found.error}")
        return found

    def first_error(self) -> str | None:
        return next((f"{d.name}: {d.error}" for d in self.drills.values() if d.error), None)

    # --- driving the lab -----------------------------------------------------------------------

    def labctl(self, *args: str, timeout: float = WAIT, log: str | None = None,
               in_netns: bool = True) -> tuple[int, list[str]]:
        """labctl ARGS through the drills' seed wrapper (seeds carry the drills' files), its output streamed.

        Inside the lab's namespace (``up --retry-failed`` asks the nodes over ssh; nothing reaches a VM from
        the host's own), but for the first `up` (``in_netns=False``), which downloads the image from the
        test's server on the host's 127.0.0.1."""
        spec = self.work / "drill-files.json"
        argv = [sys.executable, "-m", "tests.e2e.sabotage", "--files", str(spec), *args]
        if in_netns:
            argv = ["ip", "netns", "exec", self.lab.netns, *argv]
        code, lines = stream(argv, self.lab.env, timeout + 120, self.work / (log or f"{args[0]}.log"),
                             prefix=f"[{LAB} {' '.join(args[:2])}]")
        return code, [line for _, line in lines]

    def wait_for_phase(self, node: str, wanted: Callable[[list[str]], bool], timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while not wanted(phases := self.lab.phases(node)):
            if time.monotonic() > deadline:
                raise AssertionError(f"{node} never got there in {timeout:.0f}s; its phases: {phases}")
            time.sleep(POLL)
        return phases

    def rm(self, node: str, path: str) -> None:
        self.lab.ssh_ok(node, "sudo", "rm", "-f", path)


def mirror_of(plan_nat_host: str) -> str:
    return f"http://{plan_nat_host}:{PROXY_PORT}/debian"


def lab_text(entry: dict[str, str], cni: tuple[str, str], nat_host: str, key: Path, extra: dict[str, Any]) -> str:
    """The apt-path lab: the smallest that proves it (one of each role), Debian through the mirror only
    (its main suite: the mirror's updates and security Release files expire by this machine's clock)."""
    return lab_yaml(LAB, entry, masters=1, workers=1, cni=cni, memory=512, k8s_memory=768, disk=6, extra={
        "apt_mirror": mirror_of(nat_host),
        "kubernetes": {"apt_url": f"http://{nat_host}:{REPO_PORT}/k8s/", "apt_key": str(key)},
        **extra,
    })


# --- the stages ------------------------------------------------------------------------------


def boot_and_stop_lb1_mid_install(run: AptPath) -> dict[str, Any]:
    code, out = run.labctl("up", "--no-wait", log="up-no-wait.log", in_netns=False)
    assert code == 0, "\n".join(out[-30:])
    phases = run.wait_for_phase("lb1", lambda p: "packages" in p, WAIT)
    stop_code, _ = run.labctl("stop", "lb1", timeout=300, log="stop-lb1.log")
    offset = run.lab.console_path("lb1").stat().st_size
    start_code, _ = run.labctl("start", "lb1", "--no-wait", timeout=300, log="start-lb1.log")
    return {"phases_when_stopped": phases, "stop": stop_code, "start": start_code, "offset": offset}


def first_failures(run: AptPath) -> dict[str, Any]:
    code, out = run.labctl("up", "--timeout", str(WAIT), log="up-first.log")
    worker = run.wait_for_phase("worker1", lambda p: p[-1:] == ["failed packages"], WAIT)
    master = run.wait_for_phase("master1", lambda p: p[-1:] == ["failed kubeadm-init"], WAIT)
    return {"up": code, "up_tail": out[-15:], "worker1": worker, "master1": master}


def failed_node_stopped_and_started(run: AptPath) -> dict[str, Any]:
    stop_code, _ = run.labctl("stop", "master1", "worker1", timeout=300, log="stop-2.log")
    code, out = run.labctl("start", "master1", "worker1", "--timeout", str(WAIT), log="start-2.log")
    return {"stop": stop_code, "start": code, "start_tail": out[-15:]}


def retry_after_the_pin_goes(run: AptPath) -> dict[str, Any]:
    run.rm("worker1", APT_PIN)
    code, out = run.labctl("up", "--retry-failed", "--timeout", str(WAIT), log="up-retry-1.log")
    return {"up": code, "up_tail": out[-15:], "master1": run.lab.phases("master1")}


def join_fails_twice(run: AptPath) -> dict[str, Any]:
    stop_code, _ = run.labctl("stop", "worker1", timeout=300, log="stop-3.log")
    code, out = run.labctl("start", "worker1", "--timeout", str(WAIT), log="start-3.log")
    status = run.lab.labctl("status", "--output", "json", timeout=120)
    table = run.lab.labctl("status", timeout=120)
    began = time.monotonic()
    up_code, up_out = run.labctl("up", "--timeout", "600", log="up-failed.log")
    return {"stop": stop_code, "start": code, "start_tail": out[-15:], "status": json.loads(status.stdout),
            "status_table": table.stdout, "up": up_code, "up_tail": up_out[-10:],
            "up_seconds": round(time.monotonic() - began, 1)}


def retry_to_ready(run: AptPath) -> dict[str, Any]:
    run.rm("worker1", FAIL_JOIN)
    code, out = run.labctl("up", "--retry-failed", "--timeout", str(WAIT), log="up-retry-2.log")
    assert code == 0, "\n".join(out[-30:])
    return {"up": code, "up_tail": out[-10:]}


def state_moved_away(run: AptPath) -> dict[str, Any]:
    state = run.lab.state_dir
    aside = state.with_name(state.name + ".moved")
    conn = libvirt.open(run.session.daemon.uri)
    try:
        before = snapshot(conn)
        state.rename(aside)
        try:
            refused = run.lab.labctl("up", "--timeout", "60", timeout=300)
            recreated = state.exists()
            after = snapshot(conn)
        finally:
            if state.exists():
                shutil.rmtree(state)
            aside.rename(state)
    finally:
        conn.close()
    return {"code": refused.returncode, "stderr": refused.stderr, "recreated": recreated,
            "unchanged": before == after}


STAGES: tuple[Callable[[AptPath], dict[str, Any]], ...] = (
    boot_and_stop_lb1_mid_install, first_failures, failed_node_stopped_and_started, retry_after_the_pin_goes,
    join_fails_twice, retry_to_ready, state_moved_away,
)


def run_stages(run: AptPath) -> None:
    for stage in STAGES:
        drill = run.drills.setdefault(stage.__name__, Drill(stage.__name__))
        began = time.monotonic()
        try:
            with run.session.timings.measure(f"drill {stage.__name__}"):
                drill.seen = stage(run)
        except Exception as err:  # noqa: BLE001 - recorded: the tests report it, the teardown still runs
            drill.error = f"{type(err).__name__}: {err}"
            print(f"[{LAB}] stage {stage.__name__} failed:\n{traceback.format_exc()}", flush=True)
        drill.seconds = round(time.monotonic() - began, 1)
        (run.work / "drills.json").write_text(json.dumps({k: vars(v) for k, v in run.drills.items()}, indent=2,
                                                          default=str))
        if drill.error:
            return


@contextlib.contextmanager
def aptpath_lab(work: Path, extra: dict[str, Any] | None = None) -> Iterator[AptPath]:
    """The image, the repository, the proxy and the servers, then the drills; yields the lab as they left it."""
    with lab_session(work, LAB, report=work.parent / "aptpath-timings.json") as session:
        timings, stack, daemon = session.timings, session.stack, session.daemon
        with timings.measure("image: build or take from cache"):
            image, built = cloud_image(log=lambda line: print(f"[{LAB} image] {line}", flush=True))
        timings.notes["image"] = {"built": built, "path": str(image.path)}
        with timings.measure("signed Kubernetes repository of the stand-ins"):
            repo = build_repo(work / "k8s-repo", K8S_PACKAGES)
        stack.callback(keep_artifacts, session.base / "console", work)
        proxy = stack.enter_context(AptProxy(work / "aptproxy"))
        with timings.measure("package proxy bridged into the namespace"):
            proxy.bridge_into(daemon.netns, port=PROXY_PORT)
        server = stack.enter_context(HTTPTestServer())
        entry, cni = served_image(stack, server, image), serve_cni(server)
        nat = plan_of(lab_text(entry, cni, "0.0.0.0", repo.key, extra or {})).network("nat").host_address
        assert nat is not None  # libvirt's side of the NAT network: where the VMs find the proxy and the repository
        text = lab_text(entry, cni, str(nat.ip), repo.key, extra or {})
        lab = lab_for(daemon, work, LAB, text)
        (work / "drill-files.json").write_text(json.dumps(DRILL_FILES))
        netns_server = NetnsServer(daemon.netns, REPO_PORT, work / "netns-server.jsonl", {"/k8s/": repo.root})
        stack.callback(netns_server.stop)
        netns_server.start()
        stack.callback(destroy, lab)
        run = AptPath(lab, session, work, proxy, repo, mirror_of(str(nat.ip)), f"http://{nat.ip}:{REPO_PORT}/k8s/",
                      cni)
        run_stages(run)
        timings.notes["drills"] = {name: {"seconds": d.seconds, "error": d.error} for name, d in run.drills.items()}
        yield run


def keep_artifacts(consoles: Path, work: Path) -> None:
    """The consoles, the drills' record and labctl's outputs in build/aptpath (the tmp dir does not last)."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    if consoles.is_dir():
        shutil.copytree(consoles, ARTIFACTS / "console")
    for path in [*work.glob("*.log"), *work.glob("*.json"), *work.glob("aptproxy/log/*")]:
        shutil.copy2(path, ARTIFACTS / path.name)


def destroy(lab: Lab) -> None:
    try:
        done = lab.labctl("destroy", "--yes", timeout=300)
        print(f"[{LAB}] teardown: destroy: exit {done.returncode} {done.stderr.strip()[-300:]}", flush=True)
    except Exception as err:  # noqa: BLE001 - teardown never raises: the daemon's stop comes next
        print(f"[{LAB}] teardown: destroy: {err}", flush=True)

