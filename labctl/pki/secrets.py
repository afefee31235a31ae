"""The lab's secrets and identities, made on the host with cryptography and kept in its state dir.

CONTRACT: the dataclasses below are fixed. :func:`ensure_secrets` loads them from ``<state>/pki`` and makes
whatever is missing; the cryptography itself is in :mod:`labctl.pki.x509`. Layout (dirs 0700, files 0600)::

    pki/ca.{crt,key}  pki/front-proxy-ca.{crt,key}  pki/etcd/ca.{crt,key}   kubeadm's CAs
    pki/sa.key  pki/sa.pub                                                   service-account key pair
    pki/admin.{crt,key}                                                      the host's admin client cert
    pki/token  pki/haproxy-stats  pki/keepalived                             one line each
    pki/hostkeys/<node>  pki/hostkeys/<node>.pub                             SSH host keys (ed25519)
    pki/etcd/<member>/…, pki/apiserver-etcd-client.{crt,key}                 external etcd (labctl.pki.etcd)

The lab user's SSH key stays where :class:`~labctl.lab.state.LabState` makes it (``<state>/id_ed25519``).
"""

import errno
import hashlib
import os
import re
import stat
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from secrets import choice
from typing import TypeVar

from cryptography.exceptions import UnsupportedAlgorithm

from labctl.errors import StateError
from labctl.lab.plan import Plan
from labctl.lab.state import DIR_MODE, SECRET_MODE, LabState, write_private
from labctl.pki.etcd import EtcdCerts, ensure_etcd_certs
from labctl.pki.x509 import (
    ca_cert_hash,
    check_key_pair,
    issued_and_valid,
    new_ca,
    new_client_cert,
    new_rsa_key_pem,
    new_ssh_host_key_pem,
    public_key_pem,
    ssh_public_line,
)

_T = TypeVar("_T")


@dataclass(frozen=True)
class KeyPair:
    private_pem: str  # PEM (OpenSSH format for SSH keys, PKCS#8 for TLS keys)
    public: str  # OpenSSH one-line public key for SSH keys, PEM public key or certificate for TLS


@dataclass(frozen=True)
class CertAuthority:
    cert_pem: str
    key_pem: str


@dataclass(frozen=True)
class LabSecrets:
    """Everything secret or identifying that the seeds and the host need, generated once per lab."""

    ssh_user_key: KeyPair  # the lab user's key (private stays on the host)
    host_keys: Mapping[str, KeyPair]  # node name -> ed25519 SSH host key, pinned in known_hosts
    kubernetes_ca: CertAuthority  # /etc/kubernetes/pki/ca.{crt,key}
    front_proxy_ca: CertAuthority  # /etc/kubernetes/pki/front-proxy-ca.{crt,key}
    etcd_ca: CertAuthority  # /etc/kubernetes/pki/etcd/ca.{crt,key}
    service_account: KeyPair  # /etc/kubernetes/pki/sa.{key,pub} (RSA, PEM)
    bootstrap_token: str  # [a-z0-9]{6}.[a-z0-9]{16}
    ca_cert_hash: str  # "sha256:<hex of SHA-256 of the CA's DER SubjectPublicKeyInfo>"
    admin: KeyPair  # client cert (O=system:masters, CN=kubernetes-admin) signed by the CA; public = cert PEM
    haproxy_stats_password: str  # random, for the stats listener on the LB's internal address
    keepalived_password: str  # VRRP auth secret (≤ 8 chars, keepalived's PASS limit)
    keepalived_router_id: int  # 1..255, per lab
    etcd: EtcdCerts | None = None  # an external etcd's member and client certificates (None: stacked)


# --- generator and loader -------------------------------------------------------------------------

PKI_DIR = "pki"
AUTHORITIES = {"kubernetes": "ca", "front-proxy-ca": "front-proxy-ca", "etcd-ca": "etcd/ca"}  # CN -> file stem
# kubeadm ≥ 1.29 gives admin.conf O=kubeadm:cluster-admins (bound by a ClusterRoleBinding kubeadm makes);
# the host's kubeconfig uses system:masters instead, like kubeadm's super-admin.conf, so it works before
# that binding exists and even if RBAC is broken: it is the lab owner's break-glass credential.
ADMIN_CN = "kubernetes-admin"
ADMIN_ORG = "system:masters"
ALNUM = string.ascii_letters + string.digits
TOKEN_ALPHABET = string.ascii_lowercase + string.digits
TOKEN = re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}")
HAPROXY_STATS_LENGTH = 32
KEEPALIVED_PASSWORD_LENGTH = 8  # keepalived's PASS authentication uses at most 8 characters
TEXT_SECRETS = {  # file -> (what it must look like, how to make one)
    "token": (TOKEN, lambda: f"{random_text(TOKEN_ALPHABET, 6)}.{random_text(TOKEN_ALPHABET, 16)}"),
    "haproxy-stats": (re.compile(r"[A-Za-z0-9]{20,128}"), lambda: random_text(ALNUM, HAPROXY_STATS_LENGTH)),
    "keepalived": (re.compile(r"[A-Za-z0-9]{1,8}"), lambda: random_text(ALNUM, KEEPALIVED_PASSWORD_LENGTH)),
}
RESTORE_HINT = "restore it from a backup, or destroy the lab and remove its pki directory to start over"


def ensure_secrets(state: LabState, plan: Plan, now: datetime | None = None) -> LabSecrets:
    """Load the lab's secrets from ``state.root / "pki"``, make and store whatever is missing.

    Idempotent: files that exist are read (their modes tightened to 0600, dirs to 0700), never rewritten,
    except an admin certificate that expired or no longer chains to the CA. Host keys are returned for
    the nodes of ``plan`` only; a removed node's key file stays. ``now`` (default: the current UTC time;
    a naive value counts as UTC) dates new certificates.
    """
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    state.ensure()
    pki = _PkiDir.open(state.root / PKI_DIR)
    ca = pki.authority("kubernetes", now)
    etcd_ca = pki.authority("etcd-ca", now)
    text = {name: pki.text_secret(name) for name in TEXT_SECRETS}
    return LabSecrets(
        ssh_user_key=_ssh_user_key(state),
        host_keys={node.name: pki.host_key(node.name, node.fqdn) for node in plan.nodes},
        kubernetes_ca=ca,
        front_proxy_ca=pki.authority("front-proxy-ca", now),
        etcd_ca=etcd_ca,
        service_account=pki.service_account(),
        bootstrap_token=text["token"],
        ca_cert_hash=ca_cert_hash(ca.cert_pem),
        admin=pki.admin(ca, now),
        haproxy_stats_password=text["haproxy-stats"],
        keepalived_password=text["keepalived"],
        keepalived_router_id=keepalived_router_id(plan.lab.name),
        etcd=ensure_etcd_certs(plan, etcd_ca.cert_pem, etcd_ca.key_pem, pki.read, pki.write, now),
    )


def known_hosts_lines(plan: Plan, secrets: LabSecrets) -> list[str]:
    """``<name>,<fqdn>,<internal ip>[,<nat ip>] ssh-ed25519 AAAA…`` for every node of ``plan``."""
    lines = []
    for node in plan.nodes:
        key = secrets.host_keys.get(node.name)
        if key is None:
            raise StateError(f"no SSH host key for node {node.name}", "ensure_secrets makes one")
        hosts = [node.name, node.fqdn, str(node.internal.address.ip)]
        hosts += [str(nic.address.ip) for nic in node.nics if nic.network == "nat"]
        key_type, blob = key.public.split()[:2]
        lines.append(f"{','.join(hosts)} {key_type} {blob}")
    return lines


def keepalived_router_id(lab_name: str) -> int:
    """VRRP virtual_router_id in 1..255 from the lab name: two labs on one bridge differ (but for 1 in 255)."""
    return int.from_bytes(hashlib.sha256(lab_name.encode()).digest(), "big") % 255 + 1


def renew_bootstrap_token(state: LabState) -> str:
    """Replace the lab's bootstrap token with a new one (for nodes joining a lab whose token has expired)."""
    _, make = TEXT_SECRETS["token"]
    token = make()
    _PkiDir.open(state.root / PKI_DIR).write("token", token + "\n")
    return token


def bootstrap_token_age(state: LabState, now: float) -> float | None:
    """Seconds since the lab's bootstrap token was made (None: not made yet). It was made before
    `kubeadm init` registered it, so its real expiry comes later than this age suggests."""
    try:
        return now - (state.root / PKI_DIR / "token").stat().st_mtime
    except FileNotFoundError:
        return None


def random_text(alphabet: str, length: int) -> str:
    return "".join(choice(alphabet) for _ in range(length))


@dataclass(frozen=True)
class _PkiDir:
    """The files under ``<state>/pki``, addressed by relative name; every read checks owner and mode."""

    root: Path

    @classmethod
    def open(cls, root: Path) -> "_PkiDir":
        for path in (root, root / "etcd", root / "hostkeys"):
            ensure_private_dir(path)
        return cls(root)

    def read(self, name: str) -> str | None:
        return read_private(self.root / name)

    def write(self, name: str, text: str) -> None:
        path = self.root / name
        if path.parent != self.root and not path.parent.is_dir():
            ensure_private_dir(path.parent)  # pki/etcd/<member>/
        write_private(path, text.encode())

    def sync(self, name: str, text: str) -> None:
        """Write a file derived from another one, only if it is missing or differs."""
        if self.read(name) != text:
            self.write(name, text)

    def checked(self, name: str, check: Callable[[], _T]) -> _T:
        try:
            return check()
        except (ValueError, TypeError, UnsupportedAlgorithm) as err:
            raise StateError(f"{self.root / name}: unusable ({err})", RESTORE_HINT) from err

    def authority(self, common_name: str, now: datetime) -> CertAuthority:
        stem = AUTHORITIES[common_name]
        cert, key = self.read(f"{stem}.crt"), self.read(f"{stem}.key")
        if cert is None:
            # The certificate is written last, so a key without it is left from an interrupted run.
            cert, key = new_ca(common_name, now)
            self.write(f"{stem}.key", key)
            self.write(f"{stem}.crt", cert)
        elif key is None:
            raise StateError(f"{self.root / stem}.key is missing but {stem}.crt is there", RESTORE_HINT)
        else:
            self.checked(f"{stem}.crt", partial(check_key_pair, cert, key))
        return CertAuthority(cert_pem=cert, key_pem=key)

    def admin(self, ca: CertAuthority, now: datetime) -> KeyPair:
        """The host's admin client certificate; reissued (it is only ever a leaf) when unusable."""
        cert, key = self.read("admin.crt"), self.read("admin.key")
        if cert is None or key is None or not _usable_client_cert(cert, key, ca.cert_pem, now):
            cert, key = new_client_cert(ca.cert_pem, ca.key_pem, ADMIN_CN, ADMIN_ORG, now)
            self.write("admin.key", key)
            self.write("admin.crt", cert)
        return KeyPair(private_pem=key, public=cert)

    def service_account(self) -> KeyPair:
        key = self.read("sa.key")
        if key is None:
            key = new_rsa_key_pem()
            self.write("sa.key", key)
        public = self.checked("sa.key", partial(public_key_pem, key))
        self.sync("sa.pub", public)
        return KeyPair(private_pem=key, public=public)

    def host_key(self, node: str, fqdn: str) -> KeyPair:
        name = f"hostkeys/{node}"
        key = self.read(name)
        if key is None:
            key = new_ssh_host_key_pem()
            self.write(name, key)
        public = self.checked(name, partial(ssh_public_line, key, f"root@{fqdn}"))
        self.sync(f"{name}.pub", public + "\n")
        return KeyPair(private_pem=key, public=public)

    def text_secret(self, name: str) -> str:
        pattern, make = TEXT_SECRETS[name]
        value = self.read(name)
        if value is None:
            value = make()
            self.write(name, value + "\n")
        elif not pattern.fullmatch(value := value.strip()):
            raise StateError(f"{self.root / name}: does not match {pattern.pattern}", RESTORE_HINT)
        return value


def _usable_client_cert(cert: str, key: str, ca_cert: str, now: datetime) -> bool:
    try:
        check_key_pair(cert, key)
        return issued_and_valid(cert, ca_cert, now)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False


def _ssh_user_key(state: LabState) -> KeyPair:
    """The lab user's key that :meth:`LabState.ssh_public_key` keeps in the state dir."""
    state.ssh_public_key()  # makes the pair on first use
    private = read_private(state.ssh_key_path)
    public = read_private(state.ssh_key_path.with_suffix(".pub"))
    if private is None or public is None:
        raise StateError(f"{state.ssh_key_path}: the lab's SSH key vanished while reading it")
    try:
        derived = ssh_public_line(private)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise StateError(f"{state.ssh_key_path}: unusable ({err})", RESTORE_HINT) from err
    if public.split()[:2] != derived.split():
        raise StateError(f"{state.ssh_key_path}.pub is not the public key of {state.ssh_key_path.name}")
    return KeyPair(private_pem=private, public=public.strip())


# --- private files ---------------------------------------------------------------------------------


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` 0700 or tighten it; refuse a symlink, a non-directory or somebody else's."""
    try:
        path.mkdir(mode=DIR_MODE, exist_ok=True)
        info = path.lstat()
    except OSError as err:
        raise StateError(f"cannot create directory {path}: {err.strerror or err}") from err
    if not stat.S_ISDIR(info.st_mode):
        raise StateError(f"{path} is not a directory (labctl keeps secrets only in its own directories)")
    _check_owner(path, info)
    if stat.S_IMODE(info.st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE)


def read_private(path: Path) -> str | None:
    """The text of secret file ``path``, or None if missing; tightens it to 0600, refuses unsafe ones."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        reason = "is a symlink" if err.errno == errno.ELOOP else f"cannot be read: {err.strerror}"
        raise StateError(f"{path} {reason}", "labctl keeps secrets only in regular files it owns") from err
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateError(f"{path} is not a regular file")
        _check_owner(path, info)
        if stat.S_IMODE(info.st_mode) != SECRET_MODE:
            os.fchmod(fd, SECRET_MODE)
        data = handle.read()
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as err:
        raise StateError(f"{path}: not a PEM or text secret (byte {err.start})", RESTORE_HINT) from err


def _check_owner(path: Path, info: os.stat_result) -> None:
    if info.st_uid != os.getuid():
        raise StateError(f"{path} belongs to uid {info.st_uid}, not to you", "labctl refuses secrets others control")
