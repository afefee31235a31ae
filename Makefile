# labctl: `make lab` on a fresh Debian/Ubuntu host builds the default lab; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
LABCTL = $(VENV)/bin/labctl
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# What a fresh host needs: libvirt and QEMU, qemu-img, the build needs of libvirt-python, OpenSSH.
HOST_PACKAGES = libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils \
	libvirt-dev pkg-config gcc python3-dev python3-venv openssh-client
# What the tests need on top: dnsmasq and iptables for libvirt's NAT network in the private
# daemon, mmdebstrap for offline images and for the VirtualBox chroot (with Debian's archive keys,
# for sid), the validators of rendered role content, and for the apt path the package proxy and its
# bridge (apt-cacher-ng, socat, curl) and a signed apt repository (apt-utils, gpg, gpg-agent).
TEST_PACKAGES = libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils \
	libvirt-dev pkg-config gcc python3-dev python3-venv openssh-client dnsmasq-base iptables iproute2 \
	util-linux mount e2fsprogs mmdebstrap debian-archive-keyring haproxy dnsmasq keepalived nftables shellcheck \
	cloud-init apt-cacher-ng socat curl apt-utils gpg gpg-agent
# What `make bench` compares labctl with (not needed by the tests): the ISO tools others shell out
# to, and kcli from PyPI in a venv of its own (pinned, so reruns compare with the same kcli).
BENCH_PACKAGES = genisoimage xorriso
KCLI_VENV ?= build/kcli-venv
KCLI_VERSION ?= 99.0.202610251748

.PHONY: lab host-deps test-deps bench-deps venv test test-fast test-kubeadm e2e bench lint destroy clean kubeadm

lab: host-deps venv
	$(LABCTL) up

host-deps:
	$(SUDO) ./.ci/apt-install $(HOST_PACKAGES)

test-deps:
	$(SUDO) ./.ci/apt-install $(TEST_PACKAGES)

bench-deps: test-deps $(KCLI_VENV)/.installed
	$(SUDO) ./.ci/apt-install $(BENCH_PACKAGES)

$(KCLI_VENV)/.installed:
	$(PYTHON) -m venv $(KCLI_VENV)
	$(KCLI_VENV)/bin/pip install --quiet 'kcli==$(KCLI_VERSION)'
	touch $@

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test,lint]'
	touch $@

# Everything, then the tests that wait on other processes once more beside three CPU-bound
# processes (started and ended by pid by the test run), so races are found here and not by CI.
test: test-deps venv
	$(VENV)/bin/python -m pytest -v --durations=25
	$(VENV)/bin/python -m pytest -v -m races --cpu-load 3 -p no:cacheprovider

test-fast: venv
	$(VENV)/bin/python -m pytest -q -m "not slow and not e2e and not libvirt"

# The whole lab in real VMs (root, TCG): see tests/e2e/test_e2e.py. Part of `make test` too.
e2e: venv
	$(VENV)/bin/python -m pytest -v -s tests/e2e

# The real kubeadm built from source for host-side tests (tests/kubeadm); its path is the last line.
# KUBEADM_RELEASE: a minor (newest patch served) or a release, e.g. 1.35.4; default 1.35. Needs Go >= 1.25,
# which this machine kind ships in /usr/local/go (Debian 12's golang-go is 1.19). Cached under
# LABCTL_TEST_CACHE (default /var/cache/labctl-tests): minutes cold, a second warm.
KUBEADM_RELEASE ?=
kubeadm:
	$(PYTHON) -m tests.kubeadm.build kubeadm $(KUBEADM_RELEASE)

test-kubeadm: venv
	$(VENV)/bin/python -m pytest -v -m kubeadm

# labctl's costs beside the tools a user would pick instead, against a private libvirtd (root); writes
# docs/benchmarks.md and README's summary. Never part of `make test`: no timing is asserted there.
bench: bench-deps venv
	LABCTL_BENCH_KCLI=$(KCLI_VENV)/bin/kcli $(VENV)/bin/python -m pytest -v -s -p no:cacheprovider benchmarks; \
	status=$$?; $(VENV)/bin/python -m benchmarks.report && exit $$status

lint: venv
	$(VENV)/bin/ruff check labctl tests benchmarks
	$(VENV)/bin/mypy labctl
	$(VENV)/bin/lint-imports

destroy: venv
	$(LABCTL) destroy --yes

clean:
	rm -rf $(VENV) build *.egg-info
