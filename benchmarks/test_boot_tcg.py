"""4. Command → every node reachable over SSH, the same small lab under TCG: `labctl up` against kcli
(`kcli create plan`), the same private libvirtd, the same image (labctl's own builder's, the e2e one),
the same vCPUs and memory; also `labctl up` to ready, and where one node's boot time goes.

The lab is labctl's smallest: gateway, lb1 and master1 (labctl refuses fewer: a lab has one gateway,
one or two load balancers and an odd number of masters), 1 vCPU and 512 MiB each; kcli makes three
VMs of the same size from the same image. Three guests under TCG already keep both cores busy.
Reachable means `ssh -o BatchMode=yes … true` succeeds, run inside the daemon's network namespace,
for every node; each node is tried every 2 s from the moment the command starts (ConnectTimeout 30 s:
a busy TCG guest's sshd can take longer than a few seconds to send its banner). Runs alternate
between the two (kcli, labctl, labctl, kcli, …) and each starts from no lab; the image is cached
and in the pools beforehand (untimed).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from benchmarks.kcli import KCLI, Kcli
from benchmarks.kcli import USER as KCLI_USER
from benchmarks.measure import Results, Sample, environ, node_disks
from labctl.backends import open_backend
from labctl.image.build import BuiltImage
from labctl.lab.state import LabState
from labctl.ops.imagesupply import image_for_lab
from tests.e2e.image import e2e_image
from tests.e2e.lab import Lab, NetnsServer, stream
from tests.e2e.session import CNI_MANIFEST, NETNS_PORT, boot_profile, lab_for, lab_text

RUNS = int(os.environ.get("BENCH_BOOT_RUNS", "3"))
UP_TIMEOUT = 1500  # seconds: three TCG guests on a shared 2-core machine
REACH_TIMEOUT = 1200
POLL = 2.0
CPUS, MEMORY, DISK = 1, 512, 4
NAME = "bboot"


def reachable(netns: str, key: Path, user: str, address: str) -> bool:
    argv = ["ip", "netns", "exec", netns, "ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR", "-i", str(key),
            f"{user}@{address}", "true"]
    try:
        return subprocess.run(argv, capture_output=True, timeout=90, stdin=subprocess.DEVNULL).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def time_to_reach(netns: str, key: Path, user: str, addresses: Callable[[], Mapping[str, str]], nodes: list[str],
                  began: float, give_up: threading.Event) -> dict[str, float]:
    """Seconds from ``began`` until each node first answered over ssh (polled in parallel)."""

    def one(node: str) -> float:
        deadline = began + REACH_TIMEOUT
        while time.perf_counter() < deadline and not give_up.is_set():
            address = addresses().get(node)
            if address and reachable(netns, key, user, address):
                return time.perf_counter() - began
            time.sleep(POLL)
        return float("nan")

    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        return dict(zip(nodes, pool.map(one, nodes), strict=True))


@pytest.fixture(scope="module")
def setting(daemon, tmp_path_factory):
    """The image, the labctl lab (image cached and in the pool), the namespace's CNI server, kcli."""
    if not KCLI.exists():
        pytest.fail(f"kcli is not installed at {KCLI}: run `make bench-deps`")
    work = tmp_path_factory.mktemp("boot")
    image = own_copy(e2e_image(log=lambda line: print(f"[bench image] {line}", flush=True))[0], work / "image")
    entry = {"path": str(image.path), "sha512": image.sha512, "kernel": str(image.kernel),
             "initrd": str(image.initrd), "cmdline": image.cmdline}
    lab = lab_for(daemon, work, NAME, lab_text(NAME, entry, masters=1, workers=0))
    (work / "cni.yaml").write_bytes(CNI_MANIFEST)
    server = NetnsServer(daemon.netns, NETNS_PORT, work / "cni.yaml", work / "netns-server.jsonl").start()
    with environ(lab.env), open_backend("libvirt", daemon.uri) as backend:
        backend.ensure_base_image(image_for_lab(lab.plan.lab, quiet=True))
    kcli = Kcli(daemon, work / "kcli-home", image, [f"kb-{node}" for node in lab.plan.node_names], CPUS, MEMORY,
                DISK)
    kcli.prepare()
    try:
        yield work, lab, kcli, image
    finally:
        server.stop()


def own_copy(image: BuiltImage, directory: Path) -> BuiltImage:
    """The image's files copied out of the machine's e2e cache, which another checkout's run may
    replace with its own build at any time (one cached image per machine)."""
    directory.mkdir()
    paths = {key: directory / getattr(image, key).name for key in ("path", "kernel", "initrd")}
    for key, target in paths.items():
        shutil.copyfile(getattr(image, key), target)
    return dataclasses.replace(image, **paths)


def run_labctl(lab: Lab, work: Path, index: int) -> dict:
    """`labctl up` from no lab: seconds to every node reachable over ssh, and to ready."""
    nodes = lab.plan.node_names
    key = LabState.for_lab(lab.name, lab.data_home / "labctl").ssh_key_path
    addresses = {node.name: str(node.internal.address.ip) for node in lab.plan.nodes}
    stop = threading.Event()
    load = os.getloadavg()[0]  # the machine's 1-minute load as the run starts (it is shared)
    began = time.perf_counter()
    reach: dict[str, float] = {}
    poller = threading.Thread(target=lambda: reach.update(
        time_to_reach(lab.netns, key, lab.plan.lab.user, lambda: addresses, nodes, began, stop)))
    poller.start()
    argv = [sys.executable, "-m", "labctl", "up", "--timeout", str(UP_TIMEOUT)]
    code, lines = stream(argv, lab.env, UP_TIMEOUT + 60, work / f"labctl-up-{index}.log", prefix=f"[labctl {index}]")
    ready = time.perf_counter() - began
    poller.join(timeout=REACH_TIMEOUT + 60)
    stop.set()
    assert code == 0, "labctl up failed:\n" + "\n".join(line for _, line in lines[-30:])
    return {"reach": reach, "all_reachable": max(reach.values()), "ready": ready, "load": load}


def run_kcli(kcli: Kcli, netns: str) -> dict:
    nodes = kcli.nodes
    stop = threading.Event()
    load = os.getloadavg()[0]  # the machine's 1-minute load as the run starts (it is shared)
    began = time.perf_counter()
    reach: dict[str, float] = {}
    poller = threading.Thread(target=lambda: reach.update(
        time_to_reach(netns, kcli.key, KCLI_USER, kcli.addresses, nodes, began, stop)))
    poller.start()
    try:
        kcli.create()
        created = time.perf_counter() - began
    finally:
        poller.join(timeout=REACH_TIMEOUT + 60)
        stop.set()
    return {"reach": reach, "all_reachable": max(reach.values()), "command": created, "load": load}


def test_labctl_vs_kcli_to_ssh(setting, daemon, results: Results):
    work, lab, kcli, image = setting
    runs: dict[str, list[dict]] = {"labctl": [], "kcli": []}
    extra: dict = {}
    for index in range(RUNS):
        for who in ("kcli", "labctl") if index % 2 == 0 else ("labctl", "kcli"):
            if who == "labctl":
                try:
                    runs[who].append(run_labctl(lab, work, index))
                    if index == 0:
                        extra = after_ready(lab, work, daemon)
                finally:
                    lab.labctl("destroy", "--yes", timeout=300)
            else:
                try:
                    runs[who].append(run_kcli(kcli, daemon.netns))
                finally:
                    kcli.delete()
            print(f"[bench boot] run {index} {who}: {runs[who][-1]}", flush=True)
            record(results, lab, kcli, image, runs, extra)  # after every run: a cut-short run keeps them


def record(results: Results, lab: Lab, kcli: Kcli, image, runs: dict[str, list[dict]], extra: dict) -> None:
    if not runs["labctl"] or not runs["kcli"]:
        return
    labctl_reach = Sample(tuple(run["all_reachable"] for run in runs["labctl"]))
    kcli_reach = Sample(tuple(run["all_reachable"] for run in runs["kcli"]))
    results.record("boot", nodes=lab.plan.node_names, cpus=CPUS, memory=MEMORY, image=image.path.name,
                   image_bytes=image.path.stat().st_size, kcli_version=kcli.version(),
                   labctl_reach=labctl_reach, kcli_reach=kcli_reach,
                   labctl_ready=Sample(tuple(run["ready"] for run in runs["labctl"])),
                   kcli_command=Sample(tuple(run["command"] for run in runs["kcli"])),
                   ratio=labctl_reach.median / kcli_reach.median, labctl_runs=runs["labctl"],
                   kcli_runs=runs["kcli"], reach_timeout=REACH_TIMEOUT, **extra)


def after_ready(lab: Lab, work: Path, daemon) -> dict:
    """On the ready lab: where master1's boot went, and each node's disk after its first boot."""
    # A long timeout: on a loaded host a TCG guest takes minutes over `cloud-init analyze`.
    return {"boot_profile_master1": boot_profile(lab, "master1", work, timeout=900),
            "disk_after_ready": node_disks(daemon.base_dir / "pool", lab.name)}
