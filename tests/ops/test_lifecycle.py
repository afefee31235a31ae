"""Starting nodes: where readiness reads each node's console log from."""

import pytest

from labctl.lab.config import load_lab
from labctl.lab.identity import node_tag
from labctl.lab.plan import plan_lab
from labctl.ops.lifecycle import start_nodes
from tests.backends.fake import FakeBackend, FakeDomain

EARLIER = "an earlier boot's output\n" * 3


class FreshLogBackend(FakeBackend):
    """Like VirtualBox: a node's serial log is started afresh at every power-on."""

    console_log_per_boot = True

    def start_node(self, node):
        log = self.console_log(node)
        if log is not None and not self.domains[node.domain_name].running:
            log.write_text("")
        return super().start_node(node)


@pytest.mark.parametrize(("backend_class", "offset"), [(FakeBackend, len(EARLIER)), (FreshLogBackend, 0)])
def test_a_log_kept_across_boots_is_read_from_where_it_stood_a_fresh_one_from_its_start(tmp_path, backend_class,
                                                                                        offset):
    plan = plan_lab(load_lab())
    nodes = plan.nodes[:2]
    backend = backend_class(console_dir=tmp_path)
    for node in nodes:
        backend.domains[node.domain_name] = FakeDomain(node_tag(plan.lab.name, "0123456789ab", node.role, node.name))
        (tmp_path / f"{node.domain_name}.console.log").write_text(EARLIER)
    offsets = start_nodes(nodes, backend, lambda what, did: None)
    assert offsets == dict.fromkeys((node.name for node in nodes), offset)
    assert all("ready" in (tmp_path / f"{node.domain_name}.console.log").read_text()[offset:] for node in nodes)
