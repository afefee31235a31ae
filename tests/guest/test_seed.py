"""Seed contents and the NoCloud ISO, read back with pycdlib."""

import dataclasses
import io

import pycdlib
import pytest
import yaml

from labctl.guest.seed import build_seed_iso, read_seed_iso, render_seed
from labctl.lab.config import load_lab, parse_lab
from labctl.lab.plan import plan_lab
from labctl.lab.state import LabState
from labctl.pki.secrets import KeyPair, ensure_secrets
from tests.guest.manifests import with_cni


@pytest.fixture(scope="module")
def secrets(tmp_path_factory):
    plan = plan_lab(load_lab())
    return ensure_secrets(LabState.for_lab(plan.lab.name, tmp_path_factory.mktemp("state")), plan)


def test_user_data_common_part(secrets):
    plan = with_cni(plan_lab(load_lab()))
    node = plan.node("master1")
    files = render_seed(plan, node, secrets)
    text = files["user-data"].decode()
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert data["hostname"] == "master1" and data["fqdn"] == "master1.k8s.internal"
    assert data["ssh_pwauth"] is False and data["disable_root"] is True
    (user,) = data["users"]
    assert user["name"] == "lab" and user["lock_passwd"] is True
    assert user["ssh_authorized_keys"] == [secrets.ssh_user_key.public]
    assert "passwd" not in user and "plain_text_passwd" not in user
    meta = yaml.safe_load(files["meta-data"])
    assert meta == {"instance-id": node.uuid, "local-hostname": "master1"}
    # the role content is merged in
    assert data["runcmd"][-1] == ["systemctl", "enable", "--now", "--no-block", "labctl-bootstrap.service"]
    assert data["ssh_keys"]["ed25519_public"] == secrets.host_keys["master1"].public


def test_network_config_matches_nics_by_mac_and_routes_via_gateway(secrets):
    plan = plan_lab(load_lab())
    worker = plan.node("worker1")
    config = yaml.safe_load(render_seed(plan, worker, secrets)["network-config"])
    assert config["version"] == 2
    lan = config["ethernets"]["lan0"]
    assert lan["match"] == {"macaddress": worker.internal.mac}
    assert lan["addresses"] == [str(worker.internal.address)]
    assert lan["routes"] == [{"to": "0.0.0.0/0", "via": str(plan.gateway_address)}]
    assert lan["nameservers"]["addresses"] == [str(plan.gateway_address)]
    gateway = plan.node("gateway")
    gw = yaml.safe_load(render_seed(plan, gateway, secrets)["network-config"])["ethernets"]
    assert set(gw) == {"wan0", "lan0"}
    assert gw["wan0"]["routes"][0]["via"] == str(plan.network("nat").host_address.ip)
    assert "routes" not in gw["lan0"]
    # Lab names from its own dnsmasq (routed there by the domain), everything else from the NAT side.
    assert gw["lan0"]["nameservers"] == {"addresses": [str(plan.gateway_address)], "search": [plan.lab.domain]}
    assert gw["wan0"]["nameservers"] == {"addresses": [str(plan.network("nat").host_address.ip)]}


def test_hostile_values_stay_data(secrets):
    plan = plan_lab(parse_lab("domain: k8s.internal", "t"))
    tricky = 'ssh-ed25519 AAAA"; rm -rf / #\n- evil: true'
    hostile = dataclasses.replace(secrets, ssh_user_key=KeyPair(private_pem="", public=tricky))
    data = yaml.safe_load(render_seed(plan, plan.node("lb1"), hostile)["user-data"])
    assert data["users"][0]["ssh_authorized_keys"] == [tricky]


def test_iso_is_nocloud_readable_and_byte_identical(secrets):
    plan = plan_lab(load_lab())
    files = render_seed(plan, plan.node("gateway"), secrets)
    first, second = build_seed_iso(files), build_seed_iso(files)
    assert first == second
    assert read_seed_iso(first) == files
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(first))
    try:
        assert iso.pvd.volume_identifier.rstrip() == b"cidata"
        assert iso.has_joliet() and iso.has_rock_ridge()
        joliet = sorted(c.file_identifier().decode("utf-16_be") for c in iso.list_children(joliet_path="/")
                        if c.is_file())
        assert joliet == ["meta-data", "network-config", "user-data"]
    finally:
        iso.close()
