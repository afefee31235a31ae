"""docs/benchmarks.md, and the summary table in README.md, from the figures of the last `make bench`
(build/bench/results.json): ``python -m benchmarks.report [RESULTS]``.

Every figure is the median of its runs with the min–max beside it; a ratio is labctl's median over
the other's, both measured in the same run, interleaved. The targets are issue #17's."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.measure import REPO, RESULTS

DOC = REPO / "docs" / "benchmarks.md"
README = REPO / "README.md"
README_BEGIN, README_END = "<!-- bench:begin -->", "<!-- bench:end -->"
MIB = 2**20


@dataclass(frozen=True)
class Row:
    what: str
    figure: str
    compared: str
    ratio: str
    target: str
    met: bool | None  # None: no target

    def cells(self) -> list[str]:
        verdict = "—" if self.met is None else ("met" if self.met else "**missed**")
        return [self.what, self.figure, self.compared, self.ratio, self.target, verdict]


def ms(sample: dict[str, Any]) -> str:
    return f"{sample['median'] * 1e3:.2f} ms ({sample['min'] * 1e3:.2f}–{sample['max'] * 1e3:.2f})"


def secs(sample: dict[str, Any], digits: int = 2) -> str:
    return f"{sample['median']:.{digits}f} s ({sample['min']:.{digits}f}–{sample['max']:.{digits}f})"


def mib(sample: dict[str, Any]) -> str:
    return f"{sample['median'] / MIB:.2f} MiB ({sample['min'] / MIB:.2f}–{sample['max'] / MIB:.2f})"


def runs(sample: dict[str, Any]) -> str:
    return f"{sample['runs']} runs"


def seed_rows(figures: dict[str, Any]) -> list[Row]:
    rows = []
    for case in ("master2 seed", "three small files"):
        fig = figures.get(f"seed_iso/{case}")
        if not fig:
            continue
        ours, geniso, xorriso = (fig["samples"][k] for k in ("pycdlib (in-process)", "genisoimage",
                                                              "xorriso -as mkisofs"))
        ratio = fig["ratios"]["genisoimage"]
        rows.append(Row(f"1. seed ISO, {case} ({fig['input_bytes']:,} B), wall", f"{ms(ours['wall'])}",
                        f"genisoimage {ms(geniso['wall'])}; xorriso {ms(xorriso['wall'])}",
                        f"{ratio['wall']:.2f}× genisoimage, {fig['ratios']['xorriso -as mkisofs']['wall']:.3f}× "
                        f"xorriso", "≤ 0.1× genisoimage", ratio["wall"] <= 0.1))
        alone = fig["ratios"]["pycdlib without the date pinning vs genisoimage"]
        rows.append(Row(f"1. seed ISO, {case}, CPU time (ours + children)", ms(ours["cpu"]),
                        f"genisoimage {ms(geniso['cpu'])}; xorriso {ms(xorriso['cpu'])}",
                        f"{ratio['cpu']:.2f}× genisoimage (pycdlib without labctl's date pinning: "
                        f"{alone['cpu']:.2f}×)", "", None))
    fig = figures.get("seed_iso/import")
    if fig:
        rows.append(Row("1. import pycdlib (fresh interpreter)", ms(fig["samples"]["pycdlib"]),
                        f"labctl.guest.seed with its imports {ms(fig['samples']['labctl.guest.seed'])}", "", "", None))
    return rows


def up_rows(figures: dict[str, Any]) -> list[Row]:
    rows = []
    for key in sorted((k for k in figures if re.fullmatch(r"up/\d+", k)), key=lambda k: int(k.split("/")[1])):
        fig = figures[key]
        nodes = fig["nodes"]
        target = "≤ 2 s" if nodes == 7 else ""
        rows.append(Row(f"2. `up` host side, {nodes} nodes (library call)", secs(fig["seconds"]),
                        f"{fig['seconds']['median'] / nodes * 1e3:.0f} ms per node", "", target,
                        fig["seconds"]["median"] <= 2.0 if nodes == 7 else None))
    per_node = {figures[key]["nodes"]: figures[key]["seconds"]["median"] / figures[key]["nodes"]
                for key in figures if re.fullmatch(r"up/\d+", key)}
    if 7 in per_node and len(per_node) > 2:
        largest = max(per_node)
        rows.append(Row(f"2. growth, 3 → {largest} nodes", " → ".join(f"{v:.2f}" for _, v in sorted(per_node.items()))
                        + " s per node", "", f"{per_node[largest] / per_node[7]:.2f}× the 7-node cost per node",
                        "linear (per node at most 1.25× the 7-node lab's)", per_node[largest] <= 1.25 * per_node[7]))
    return rows


def disk_rows(figures: dict[str, Any]) -> list[Row]:
    fig = figures.get("disk/7")
    if not fig:
        return []
    overlay, seed = fig["overlay"], fig["seed"]
    per_node = overlay["median"] + seed["median"]
    return [Row("3. disk per node at creation (overlay + seed ISO)", f"{per_node / MIB:.2f} MiB "
                f"(overlay {mib(overlay)}, seed {mib(seed)})",
                f"a full copy of the image: {fig['full_copy_bytes'] / MIB:.0f} MiB",
                f"{per_node / fig['full_copy_bytes']:.4f}×", "≤ 5 MiB", per_node <= 5 * MIB)]


def boot_rows(figures: dict[str, Any]) -> list[Row]:
    fig = figures.get("boot")
    if not fig:
        return []
    ours, theirs = (finite([run["all_reachable"] for run in fig[key]]) for key in ("labctl_runs", "kcli_runs"))
    ready = finite([run["ready"] for run in fig["labctl_runs"]])
    if not ours or not theirs:
        return [Row("4. command → all nodes reachable over ssh (TCG)", "no comparable runs", "", "", "≤ 0.8× kcli",
                    False)]
    ratio = _median(ours) / _median(theirs)
    return [Row(f"4. command → all {len(fig['nodes'])} nodes reachable over ssh (TCG)", spread(ours),
                f"kcli {spread(theirs)}", f"{ratio:.2f}×", "≤ 0.8× kcli", ratio <= 0.8),
            Row("4. `labctl up` → every node ready (same lab)", spread(ready), "", "", "", None)]


def finite(values: list[float]) -> list[float]:
    return [value for value in values if not math.isnan(value)]


def spread(values: list[float]) -> str:
    """Seconds: median (min–max, runs), of the runs that finished."""
    return f"{_median(values):.0f} s ({min(values):.0f}–{max(values):.0f}; {len(values)} run{'s' * (len(values) > 1)})"


def seconds_or_none(value: float, limit: float) -> str:
    return f"no answer within {limit:.0f} s" if math.isnan(value) else f"{value:.0f} s"


def rss_rows(figures: dict[str, Any]) -> list[Row]:
    fig = figures.get("rss/7")
    if not fig:
        return []
    rss = fig["max_rss_kib"]
    return [Row("5. peak RSS of `labctl up --no-wait`, 7 nodes", f"{rss['median'] / 1024:.1f} MiB "
                f"({rss['min'] / 1024:.1f}–{rss['max'] / 1024:.1f})",
                f"31 nodes: {fig['max_rss_kib_31'] / 1024:.1f} MiB", "", "", None),
            Row("5. `labctl up --no-wait` as a command, 7 nodes (interpreter start included)",
                secs(fig["cli_seconds"]), f"31 nodes: {fig['cli_seconds_31']:.2f} s", "", "", None)]


def download_rows(figures: dict[str, Any]) -> list[Row]:
    fig = figures.get("download")
    if not fig:
        return []
    names = list(fig["samples"])
    ours, curl, curl_sum = (fig["samples"][name]["wall"] for name in names)
    speed = fig["mib_per_s"]
    return [Row(f"6. download {fig['bytes'] / MIB:.0f} MiB from 127.0.0.1, SHA-512 on",
                f"{secs(ours)} ({speed[names[0]]:.0f} MiB/s)",
                f"curl -o {secs(curl)} ({speed[names[1]]:.0f} MiB/s); curl + sha512sum {secs(curl_sum)}",
                f"{fig['throughput_vs_curl']:.2f}× curl's throughput; "
                f"{curl_sum['median'] / ours['median']:.2f}× curl + sha512sum's", "≥ 0.9× curl",
                fig["throughput_vs_curl"] >= 0.9)]


SECTIONS: list[Callable[[dict[str, Any]], list[Row]]] = [seed_rows, up_rows, disk_rows, boot_rows, rss_rows,
                                                         download_rows]
HEADER = ["what", "labctl: median (min–max)", "compared with", "ratio", "target", "met?"]


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "| " + " | ".join("---" for _ in HEADER) + " |"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def fit(points: list[tuple[float, float]]) -> tuple[float, float, float]:
    """Least squares ``y = a + b·x``: (a, b, R²)."""
    n = len(points)
    mean_x, mean_y = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
    base = mean_y - slope * mean_x
    ss_res = sum((y - (base + slope * x)) ** 2 for x, y in points)
    ss_tot = sum((y - mean_y) ** 2 for _, y in points)
    return base, slope, 1 - ss_res / ss_tot if ss_tot else 1.0


def growth(figures: dict[str, Any]) -> str:
    """Per-size times, a least-squares line through them, and how far each size is from it; the same
    for labctl's own part (all but the domain starts, which are libvirt's and QEMU's)."""
    sizes = sorted((fig["nodes"], fig) for key, fig in figures.items() if re.fullmatch(r"up/\d+", key))
    if len(sizes) < 2:
        return "(not measured)"
    points = [(float(nodes), fig["seconds"]["median"]) for nodes, fig in sizes]
    own = [(float(nodes), fig["seconds"]["median"] - fig["phases"]["starts"]["median"]) for nodes, fig in sizes]
    base, slope, r2 = fit(points)
    own_base, own_slope, own_r2 = fit(own)
    lines = ["| nodes | median s | s per node | fit (a + b·n) | off the fit | all but the starts |",
             "| --- | --- | --- | --- | --- | --- |"]
    for (x, y), (_, mine) in zip(points, own, strict=True):
        line = base + slope * x
        lines.append(f"| {x:.0f} | {y:.2f} | {y / x:.3f} | {line:.2f} | {100 * (y - line) / line:+.0f}% | {mine:.2f} |")
    lines += ["", f"Least squares, the whole of it: {base:.2f} s + {slope:.3f} s × nodes, R² = {r2:.3f}; "
              f"all but the domain starts: {own_base:.2f} s + {own_slope:.3f} s × nodes, R² = {own_r2:.3f}. "
              "The starts (`virDomainCreate`, QEMU coming up) carry the machine's load, which changed "
              "during the run; the rest is labctl's own work."]
    return "\n".join(lines)


def phases(figures: dict[str, Any]) -> str:
    keys = sorted((k for k in figures if re.fullmatch(r"up/\d+", k)), key=lambda k: int(k.split("/")[1]))
    if not keys:
        return ""
    names = list(figures[keys[0]]["phases"])
    lines = ["| phase | " + " | ".join(f"{figures[k]['nodes']} nodes" for k in keys) + " |",
             "| --- |" + " --- |" * len(keys)]
    for name in names:
        cells = [f"{figures[k]['phases'][name]['median']:.2f}" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fence(lines: list[str]) -> str:
    return "```\n" + "\n".join(lines) + "\n```"


def render(data: dict[str, Any]) -> str:
    figures = data.get("figures", {})
    rows = [row for section in SECTIONS for row in section(figures)]
    machine = data.get("machine", {})
    parts = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`benchmarks/`, then `python -m benchmarks.report`); do not edit by hand.",
        "Issue #17: labctl's cost side by side with what a user would pick instead. Ratios are measured in "
        "the same run, the contenders interleaved round by round; absolute times are context only.",
        "",
        f"- date: {data.get('started', '?')}; `make bench` took {_minutes(data.get('total_seconds'))} "
        "(the pytest run; `make bench-deps` before it installs genisoimage, xorriso and kcli once)"
        + (f": {data['runtime_note']}" if data.get("runtime_note") else ""),
        f"- machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
        f"{machine.get('memory_gib', '?')} GiB, {machine.get('os', '?')}, kernel {machine.get('kernel', '?')}, "
        f"Python {machine.get('python', '?')}",
        f"- accelerator: {machine.get('accelerator', '?')}",
        f"- load average (1, 5, 15 min) at the start {_load(data.get('load_start'))}, at the end "
        f"{_load(data.get('load_end'))}: the machine is shared with other work, so wall times carry its load; "
        "CPU times (ours plus our children's) do not",
        f"- command: `{data.get('command', '?')}`",
        *(f"- measured again on {again['started']} (`{again['command']}`{_when(again)}): "
          f"{', '.join(again['figures'])}" for again in data.get("amended", [])),
        "",
        "## Summary",
        "",
        table(rows),
        "",
        MISSED_HEADER,
        "",
        *missed_lines(rows),
        "",
        "## 2. Growth with lab size (host side of `up`, guests not booted)",
        "",
        growth(figures),
        "",
        "Where the time goes, per phase (median seconds):",
        "",
        phases(figures),
        "",
        *profile(figures),
        *boot_details(figures),
        *commands(figures),
    ]
    return "\n".join(parts).rstrip() + "\n"


MISSED_HEADER = "### Missed targets: why, and what would fix it"
WHY = {
    "1.": "On wall time the in-process build is well under a subprocess's fork, exec and load; on CPU time "
          "it is about a quarter of genisoimage's, and about a third of that is labctl's own pass that pins "
          "every date (it walks pycdlib's object graph) so that equal seeds are byte-identical. A fix: set "
          "those dates in the written bytes (the records' offsets are known) instead of walking the graph.",
    "2.": "Starting the domains dominates: `virDomainCreate` (QEMU started and its monitor handshake, one "
          "domain after another) is three quarters of the 31-node profile, about 0.3–0.7 s per domain on "
          "this loaded 2-core machine; then rendering the seeds (PyYAML's pure-Python emitter) and creating "
          "the volumes. A fix: start the domains concurrently once the gateway's is started, and dump the "
          "seeds with PyYAML's C emitter where it is built in.",
    "3.": "",
    "4.": "",
    "6.": "Every byte is hashed with SHA-512 as it arrives (the cache is keyed by SHA-512), which on "
          "loopback costs more CPU than receiving it; against `curl -o` then `sha512sum`, the way to get a "
          "verified file with curl, labctl is faster. A fix: hash on a second thread (hashlib releases the "
          "GIL), so receiving and hashing overlap on two cores; over a real network link the hash keeps up "
          "and the gap closes.",
}


def missed_lines(rows: list[Row]) -> list[str]:
    missed = sorted({row.what.split()[0] for row in rows if row.met is False})
    if not missed:
        return ["Every target was met."]
    return [f"- item {item[:-1]}: {WHY.get(item, '')}" for item in missed]


def profile(figures: dict[str, Any]) -> list[str]:
    key = next((k for k in figures if k.startswith("up/profile/")), None)
    if key is None:
        return []
    fig = figures[key]
    return [f"### Profile of the largest lab ({key.rsplit('/', 1)[1]} nodes, cProfile, one run)", "",
            "By cumulative time:", "", fence(fig["cumulative"]), "", "By own time:", "", fence(fig["own"]), ""]


def boot_details(figures: dict[str, Any]) -> list[str]:
    fig = figures.get("boot")
    if not fig:
        return []
    out = ["## 4. Booting the same small lab under TCG: labctl and kcli", "",
           f"Nodes: {', '.join(fig['nodes'])}, {fig['cpus']} vCPU and {fig['memory']} MiB each, image "
           f"{fig['image']} ({fig['image_bytes'] / MIB:.0f} MiB), kcli {fig['kcli_version']}; "
           f"{len(fig['labctl_runs'])} run(s) each, interleaved (kcli first in the first round). The lab is labctl's "
           "smallest (one gateway, one load balancer, an odd number of masters: fewer nodes are refused), and "
           "three TCG guests already keep both cores busy. Both start from no lab, the image cached and in "
           "the pools. kcli's kvm provider has no direct kernel boot and the image has no bootloader, so its "
           "plan is created with `start: false`, then the kernel, initrd and command line (plus "
           "`net.ifnames=0`: kcli's seed names `eth0`) are set through libvirt and the domains started, all "
           "inside kcli's timed command (`benchmarks/kcli.py`). Reachable: `ssh -o BatchMode=yes … true` "
           "answers, from inside the namespace, polled every 2 s per node (user `lab` with the lab's key; "
           "`debian` with kcli's).", "",
           "| run | labctl: all reachable | labctl: ready | kcli: all reachable | kcli: its command returned "
           "| load at the start (labctl, kcli) |", "| --- | --- | --- | --- | --- | --- |"]
    limit = fig.get("reach_timeout", 1200)
    for index, (ours, theirs) in enumerate(zip(fig["labctl_runs"], fig["kcli_runs"], strict=False)):
        out.append(f"| {index + 1}{' (' + ours['note'] + ')' if ours.get('note') else ''} | "
                   f"{seconds_or_none(ours['all_reachable'], limit)} | {seconds_or_none(ours['ready'], limit)} | "
                   f"{seconds_or_none(theirs['all_reachable'], limit)} | {theirs['command']:.1f} s | "
                   f"{_load([ours['load']]) if 'load' in ours else '?'}, "
                   f"{_load([theirs['load']]) if 'load' in theirs else '?'} |")
    out.append("")
    out.append("Per node, seconds to first ssh answer (median over runs):")
    out.append("")
    for who, key in (("labctl", "labctl_runs"), ("kcli", "kcli_runs")):
        nodes = fig[key][0]["reach"] if fig[key] else {}
        cells = [f"{node} {_median(finite([run['reach'].get(node, math.nan) for run in fig[key]])):.0f} s"
                 for node in nodes]
        out.append(f"- {who}: " + ", ".join(cells))
    out.append("")
    if fig.get("boot_profile_master1"):
        out += ["Where master1's first boot went (labctl's lab, "
                f"{fig.get('boot_profile_note', 'first run')}; `systemd-analyze`, "
                "`systemd-analyze blame`, `cloud-init analyze show` and `blame`):", "",
                fence(fig["boot_profile_master1"]), ""]
    if fig.get("disk_after_ready"):
        cells = [f"{node} {sizes.get('overlay', 0) / MIB:.0f} MiB" for node, sizes in fig["disk_after_ready"].items()]
        out += ["Each node's overlay once ready (after its first boot): " + ", ".join(cells) + ".", ""]
    return out


def commands(figures: dict[str, Any]) -> list[str]:
    seed = figures.get("seed_iso/master2 seed", {}).get("commands", {})
    download = figures.get("download", {}).get("command", "curl -sS --fail -o FILE URL")
    return ["## How it was measured", "",
            "Run it: `sudo make bench` (root: it starts its own libvirtd in a network namespace of its own, "
            "and ends it, its guests and the namespace at the end). `make bench-deps` installs genisoimage "
            "and xorriso (apt) and kcli (PyPI, in `build/kcli-venv`); `BENCH_BOOT_RUNS`, `BENCH_UP_RUNS` "
            "set the runs of items 4 and 2 (default 3); `BENCH_APPEND=1` measures the selected benchmarks again "
            "into the last run's results (the figures it replaces are listed above, with the time), "
            "`BENCH_RESULTS` writes the results elsewhere.", "",
            "1. `benchmarks/test_seed_iso.py`: `build_seed_iso(files)` against, on the same files written once "
            f"to a directory, `{seed.get('genisoimage', 'genisoimage …')}` and `{seed.get('xorriso', 'xorriso …')}`; "
            "40 rounds, interleaved, after one warm-up each. Import cost: `import pycdlib` timed inside 10 "
            "fresh interpreters.",
            "2. `benchmarks/test_up_host.py`: `labctl.ops.lifecycle.up(…, wait=False)` with the CLI's host gate, "
            "against the private libvirtd, blank 64 MiB qcow2 base (domains idle in the BIOS), from no lab "
            "(the previous one destroyed, untimed) to every domain running; the base volume already in the "
            "pool. Labs: gateway, lb1, 1 master (3 nodes) or 3 masters, and workers for the rest.",
            "3. The same 7-node lab: each node's files in the pool (`st_blocks`) right after `up`, against the "
            "e2e image a full copy per node would duplicate.",
            "4. `benchmarks/test_boot_tcg.py`: `labctl up` against `kcli create plan` (plus the direct-boot "
            "settings kcli lacks, timed with it: see `benchmarks/kcli.py`), ssh polled every 2 s from inside "
            "the namespace.",
            "5. `labctl up --no-wait` as a child process; its peak RSS is its own VmHWM as it exits (`wait4`'s "
            "`ru_maxrss` would report the forking benchmark process's size, which Linux carries across exec).",
            f"6. `benchmarks/test_download.py`: `fetch()` against `{download}`, the server "
            "(tests/httpserver.py) in a process of its own on 127.0.0.1; 5 rounds, interleaved.", ""]


def _median(values: list[float]) -> float:
    clean = sorted(v for v in values if not math.isnan(v))
    if not clean:
        return float("nan")
    mid = len(clean) // 2
    return clean[mid] if len(clean) % 2 else (clean[mid - 1] + clean[mid]) / 2


def _minutes(seconds: float | None) -> str:
    return f"{seconds / 60:.1f} min" if seconds else "?"


def _when(again: dict[str, Any]) -> str:
    """How long a later measurement took and the load around it, as far as known."""
    parts = [_minutes(again["total_seconds"])] if again.get("total_seconds") else []
    if again.get("load_start"):
        parts.append(f"load {_load(again['load_start'])} at the start, {_load(again.get('load_end'))} at the end")
    return "".join(f", {part}" for part in parts)


def _load(values: list[float] | None) -> str:
    return ", ".join(f"{v:.1f}" for v in values) if values else "?"


def summary(data: dict[str, Any]) -> str:
    """The README's short table: one line per item."""
    rows = [row for section in SECTIONS for row in section(data.get("figures", {}))]
    keep = [row for row in rows if "CPU" not in row.what and "three small" not in row.what
            and "import" not in row.what and not re.search(r"up` host side, (3|15) nodes", row.what)
            and "as a command" not in row.what]
    lines = ["| item | labctl | compared with | target | met? |", "| --- | --- | --- | --- | --- |"]
    for row in keep:
        cells = row.cells()
        lines.append(f"| {cells[0]} | {cells[1]} | {' — '.join(c for c in (cells[2], cells[3]) if c)} | "
                     f"{cells[4] or '—'} | {cells[5]} |")
    return "\n".join(lines)


def update_readme(text: str, data: dict[str, Any]) -> str:
    block = (f"{README_BEGIN}\nFrom `make bench` on {data.get('started', '?')} ({data.get('machine', {}).get('cores')}"
             f" cores, TCG, a shared machine); details and how each was measured in "
             f"[docs/benchmarks.md](docs/benchmarks.md):\n\n{summary(data)}\n{README_END}")
    if README_BEGIN in text:
        return re.sub(re.escape(README_BEGIN) + ".*?" + re.escape(README_END), lambda _: block, text, flags=re.S)
    return text.rstrip() + "\n\n## Benchmarks\n\n" + block + "\n"


def main(argv: list[str]) -> int:
    source = Path(argv[1]) if len(argv) > 1 else RESULTS
    data = json.loads(source.read_text())
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render(data))
    README.write_text(update_readme(README.read_text(), data))
    print(f"wrote {DOC.relative_to(REPO)} and the summary in {README.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
