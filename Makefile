# postroom — `make demo` runs the demo, `make test` runs the tests; both set up a fresh machine.
.DEFAULT_GOAL := all
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard protos/postroom/v1/*.proto)
GEN_DIR := postroom/v1
# Generated files are committed; check-proto regenerates into a temp dir and diffs.
PROTOC = $(PY) -m grpc_tools.protoc -I protos \
	--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
	--python_out=$(1) --mypy_out=$(1) --grpc_python_out=$(1) --mypy_grpc_out=$(1) $(PROTO_SRC)

.PHONY: all install system-deps pds postgres proto check-proto lint typecheck test test-fast demo bench chaos chaos-partitions clean

all: lint typecheck test

# System packages the tests drive for real: Prometheus/promtool, Chromium (with Noto fonts, else
# screenshots show boxes for glyphs), and iptables for the network-partition tests (which make
# their own namespaces as root).
system-deps:
	@missing=""; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	dpkg -s fonts-noto-core >/dev/null 2>&1 || missing="$$missing fonts-noto-core"; \
	dpkg -s fonts-noto-color-emoji >/dev/null 2>&1 || missing="$$missing fonts-noto-color-emoji"; \
	command -v iptables >/dev/null || missing="$$missing iptables"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) system-deps

# The Bluesky reference PDS the Bluesky tests and `postroom demo --platforms bluesky` run
# (sandbox/pds): node_modules installed once per package-lock.json into the user's cache,
# outside the repo, so fresh clones reuse it (sandbox/local/pds.py finds it by the same rule). better-sqlite3 builds from source against the
# machine's Node headers. No npm: the Bluesky PDS tests skip.
PDS_LOCK := sandbox/pds/package-lock.json
PDS_CACHE = $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/postroom/pds-$(shell sha256sum $(PDS_LOCK) | cut -c1-16)

pds:
	@if [ -f "$(PDS_CACHE)/.installed" ]; then exit 0; fi; \
	if ! command -v npm >/dev/null; then echo "npm not found: the Bluesky PDS tests will skip"; exit 0; fi; \
	echo "installing the Bluesky PDS for the tests into $(PDS_CACHE)"; \
	rm -rf "$(PDS_CACHE).tmp" && mkdir -p "$(PDS_CACHE).tmp" && \
	cp sandbox/pds/package.json $(PDS_LOCK) "$(PDS_CACHE).tmp/" && \
	(cd "$(PDS_CACHE).tmp" && npm_config_nodedir=$${npm_config_nodedir:-/usr} \
	  npm ci --no-audit --no-fund --loglevel=error </dev/null) && \
	touch "$(PDS_CACHE).tmp/.installed" && rm -rf "$(PDS_CACHE)" && mv "$(PDS_CACHE).tmp" "$(PDS_CACHE)"

proto: $(STAMP)
	$(call PROTOC,.)

check-proto: $(STAMP)
	@tmp=$$(mktemp -d); $(call PROTOC,$$tmp) && \
	if diff -r -q $$tmp/$(GEN_DIR) $(GEN_DIR) -x __init__.py -x __pycache__; then \
	  echo "generated protocol code is current"; rm -rf $$tmp; \
	else echo "generated code is stale: run 'make proto' and commit"; rm -rf $$tmp; exit 1; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy postroom coordinator worker sandbox postroom_cli postroom_vault bench tests

# The PostgreSQL store's tests need the server (toolchain.md): start the cluster when it is
# installed but down. Not installed: those tests skip (and fail in CI).
postgres:
	@if command -v pg_ctlcluster >/dev/null && [ -n "$$(ls /etc/postgresql 2>/dev/null)" ]; then \
	  v=$$(ls /etc/postgresql | head -1); \
	  pg_ctlcluster --skip-systemctl-redirect $$v main status >/dev/null || \
	  pg_ctlcluster --skip-systemctl-redirect $$v main start; \
	fi

test: install check-proto pds postgres
	$(VENV)/bin/pytest -q -p no:cacheprovider --durations=25

demo: install
	$(VENV)/bin/postroom demo

bench: install
	$(PY) -m bench.run --out bench/results.json

# `make chaos ARGS=--partitions` (or `make chaos-partitions`) mixes network partitions in (root).
# Several coordinators on PostgreSQL: ARGS="--db postgresql://USER@HOST/EMPTY_DB --coordinators 3"
# (placement spread, as the coordinators' default: each serves a share of the shards; its kills
# hit any of them), plus --placement one (one active; its kills hit the active one).
chaos: install
	$(PY) -m bench.chaos --posts 1000 --workers 4 --seed $${SEED:-1} $(ARGS)

chaos-partitions: install
	$(PY) -m bench.chaos --posts 1000 --workers 4 --seed $${SEED:-1} --partitions $(ARGS)

# postroom side by side with Celery, arq and procrastinate (../shared/bench-peers/README.md,
# ~12 min): this commit, cloned and installed in $TMPDIR/peerbench/postroom, against the peers;
# the report lands in bench/peers-RESULTS.md and bench/peers-results.json and its ratios join the
# history in bench/results.json (`peer_runs`). `make bench-peers ARGS=--quick`: a 1-minute smoke
# run, not added to the history.
.PHONY: bench-peers
PEER_BENCH_DIR ?= ../shared/bench-peers
PEER_BENCH_CLONE = $${TMPDIR:-/tmp}/peerbench/postroom
# The harness runs from a copy: while its postroom peer still swaps worker.main.build_adapters
# (which no longer matches the worker), bench/peer-harness-plugin.patch makes it a plug-in.
PEER_BENCH_COPY = $${TMPDIR:-/tmp}/peerbench/harness
bench-peers: install
	rm -rf "$(PEER_BENCH_CLONE)" && git clone -q . "$(PEER_BENCH_CLONE)"
	$(MAKE) -C "$(PEER_BENCH_CLONE)" install
	rm -rf "$(PEER_BENCH_COPY)" && cp -r $(PEER_BENCH_DIR) "$(PEER_BENCH_COPY)"
	if grep -q build_adapters "$(PEER_BENCH_COPY)/pb_postroom.py"; then \
	  patch -s -p1 -d "$(PEER_BENCH_COPY)" < bench/peer-harness-plugin.patch; fi
	bash "$(PEER_BENCH_COPY)/run.sh" --out "$(CURDIR)/bench/peers-RESULTS.md" \
	  --json "$(CURDIR)/bench/peers-results.json" $(ARGS)
	$(PY) -m bench.peers fold bench/peers-results.json --results bench/results.json

# Hostile-input tests with many more generated inputs (FUZZ_EXAMPLES per RPC and per test;
# the suite runs 100); the inputs tried per RPC and per worker message land in fuzz-report.jsonl.
.PHONY: fuzz
fuzz: install
	rm -f fuzz-report.jsonl
	POSTROOM_FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-2000} POSTROOM_FUZZ_REPORT=fuzz-report.jsonl \
	  $(VENV)/bin/pytest -q -p no:cacheprovider -s tests/test_hostile_publishing.py tests/test_hostile_worker.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
