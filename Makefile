# Cloud Spectra Gateway — developer entry points. `make run` and `make test` are all a
# newcomer needs; both install what they need first (idempotent, seconds on a re-run).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SPECTRA := $(VENV)/bin/spectra
APT_PACKAGES := python3-bpfcc libbpfcc libbpfcc-dev libbpf1 clang llvm linux-headers-amd64 \
	nftables iptables libnetfilter-queue-dev iproute2 ethtool conntrack conntrackd tcpdump tshark \
	netsniff-ng iperf3 hping3 sockperf curl python3-venv util-linux procps iputils-ping openssl chromium \
	debootstrap systemd-container squid haproxy redis-server
TESTS ?= tests

.PHONY: deps dashboard run test perf lint clean

deps: .state/apt.stamp .state/suricata.stamp .state/venv.stamp .state/dashboard.stamp
	@bash deploy/kernel-setup.sh

.state/apt.stamp: Makefile
	@mkdir -p .state
	@missing=$$(dpkg-query -W -f='$${Package} $${Status}\n' $(APT_PACKAGES) 2>/dev/null \
		| awk '$$NF!="installed"{print $$1}'; \
		for p in $(APT_PACKAGES); do dpkg-query -W $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@touch $@

# Suricata 7 from bookworm-backports, pinned so nothing else comes from that suite.
.state/suricata.stamp: deploy/suricata/install-suricata.sh .state/apt.stamp
	@bash deploy/suricata/install-suricata.sh
	@touch $@

.state/venv.stamp: pyproject.toml .state/apt.stamp
	@test -x $(PY) || python3 -m venv $(VENV)
	@# Debian's bcc (python3-bpfcc) is pure Python over libbcc: expose only that package.
	@ln -sfn /usr/lib/python3/dist-packages/bcc \
		$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/bcc
	@$(PY) -m pip install -q --upgrade pip >/dev/null
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $@

# The dashboard (control/dashboard/app: Vite + TypeScript + Preact + uPlot) built into
# control/dashboard/dist, which the config API serves and the wheel ships. `npm ci`
# installs exactly the committed package-lock.json; skipped while nothing changed.
DASHBOARD_APP := control/dashboard/app
DASHBOARD_SRC := $(shell find $(DASHBOARD_APP)/src -type f 2>/dev/null) \
	$(addprefix $(DASHBOARD_APP)/,package.json package-lock.json index.html vite.config.ts tsconfig.json)

.state/node.stamp: Makefile
	@mkdir -p .state
	@if ! command -v npm >/dev/null || ! command -v node >/dev/null; then \
		echo "installing Debian packages: nodejs npm"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; \
	fi
	@touch $@

.state/dashboard.stamp: .state/node.stamp $(DASHBOARD_SRC)
	@cd $(DASHBOARD_APP) && npm ci --no-audit --no-fund --loglevel=error && npm run -s build >/dev/null
	@test -f control/dashboard/dist/index.html
	@touch $@

dashboard: .state/dashboard.stamp

run: deps
	@$(SPECTRA) lab run

test: deps
	@$(PY) -m pytest $(TESTS)

perf: deps
	@$(PY) -m perf all --json perf-results/all.json

lint: deps
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/mypy

clean:
	-@$(SPECTRA) lab down
	-@$(PY) -m perf.lab.vpc down >/dev/null
	rm -rf $(VENV) .state
