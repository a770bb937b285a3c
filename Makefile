# Bellhop: the two commands a newcomer needs are `make run` and `make test`.
CARGO ?= cargo
BIN := target/release/bellhop
# Seconds each fuzz target runs in `make fuzz`, and in the short run `make test` does.
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 15
# Where cargo puts binaries, for the k6 targets (honours CARGO_TARGET_DIR).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)

.PHONY: run test lint unit sdk-ts console k6-smoke k6 bench bench-quick bench-deps conformance fuzz fuzz-smoke fuzz-seeds autobahn deps test-deps build cluster cluster-down clean help \
	image image-smoke manifest-run deploy-test dockerfile-lint chart-test rules-test observability-test

# What the browser tests need: Node.js 20 or newer ($(1) names who needs it) and Debian's chromium,
# installed when missing ($(2) says why).
define browser-deps
command -v node >/dev/null 2>&1 && node -e 'process.exit(parseInt(process.versions.node, 10) < 20 ? 1 : 0)' || { echo "$(1) needs Node.js 20 or newer (node --version: $$(node --version 2>/dev/null || echo none))"; exit 1; }; \
	command -v chromium >/dev/null 2>&1 || { \
	  echo "chromium is missing: installing it ($(2))"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }
endef

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

deps: ## check for (and install, where missing) what building and testing need
	@command -v $(CARGO) >/dev/null 2>&1 || { echo "cargo is missing: install Rust (https://rustup.rs) first"; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy

test-deps: deps ## also what the test suites need: redis-server and redis-cli (tests start their own servers and a Redis Cluster on free ports)
	@{ command -v redis-server && command -v redis-cli; } >/dev/null 2>&1 || { \
	  echo "redis-server is missing: installing it (the Redis backend's tests start their own)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server >/dev/null; }
	@{ command -v redis-server && command -v redis-cli; } >/dev/null 2>&1 || { echo "redis-server or redis-cli could not be installed"; exit 1; }
	@command -v openssl >/dev/null 2>&1 || { \
	  echo "openssl is missing: installing it (the TLS tests also check the node with openssl s_client)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq openssl; } >/dev/null 2>&1 || { echo "openssl could not be installed (apt-get install openssl): the TLS tests need it"; exit 1; }; }

build: deps ## build the release binary
	$(CARGO) build --release -p bellhop

run: build ## run one node on the embedded broker (ws://127.0.0.1:3001/ws, admin on :9090)
	@echo
	@echo "Bellhop node: ws://127.0.0.1:$${WS_PORT:-3001}$${WS_PATH:-/ws}   admin: http://127.0.0.1:$${METRICS_PORT:-9090}/metrics"
	@echo "In another terminal, mint a token and connect (see README, 'A two-minute tour'):"
	@echo "  T=\$$($(BIN) token --sub s1 --role staff --prop h1 --depts housekeeping)"
	@echo "  $(BIN) connect --token \$$T --subscribe dept:housekeeping --follow"
	@echo
	$(BIN) serve

cluster: build ## a local cluster: Redis, three nodes, nginx in front when installed (see deploy/local-cluster.sh)
	@command -v redis-server >/dev/null 2>&1 || $(MAKE) test-deps
	@command -v nginx >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq nginx-light >/dev/null 2>&1; } || echo "nginx not available: the nodes run without a load balancer"
	deploy/local-cluster.sh up

cluster-down: ## stop exactly what `make cluster` started
	deploy/local-cluster.sh down

lint: deps ## formatting and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: test-deps ## the test suites only (nats-server and the Socket.IO peer for the load generator's peer tests are installed first; with BELLHOP_REQUIRE_TOOLS=1 a test whose tool is missing fails instead of saying SKIPPED)
	@bench/peers/install.sh >/dev/null || { echo "bench/peers/install.sh failed (nats-server from apt, npm ci of the Socket.IO peer): the load generator's peer tests need them"; exit 1; }
	BELLHOP_REQUIRE_TOOLS=1 $(CARGO) test --workspace

conformance: ## a short fuzz run of every target and the Autobahn WebSocket suite; each skips with a message where its tools cannot be had
	@fuzz/run.sh --smoke $(FUZZ_SMOKE_SECONDS)
	@tests/autobahn/run.sh --optional

sdk-ts: test-deps ## the TypeScript SDK (clients/typescript): npm ci, build, type check, its tests against debug nodes it starts (Debian's chromium for the page test), docs/asyncapi.yaml and docs/openapi.yaml through their official parsers
	@$(call browser-deps,the TypeScript SDK,the SDK's example page is tested in a real browser)
	$(CARGO) build -q -p bellhop
	cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error && BELLHOP_BIN=$(abspath $(TARGET_DIR))/debug/bellhop npm test

console: test-deps ## the front-desk console (clients/console) and the examples (examples/) in Debian's chromium against debug nodes they start: npm ci, Vite builds, vitest; UPDATE_SCREENSHOTS=1 rewrites docs/console*.png
	@$(call browser-deps,the console,the console is tested in a real browser)
	$(CARGO) build -q -p bellhop
	@[ -d clients/typescript/node_modules ] || { cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error; }
	cd clients/console && npm ci --no-audit --no-fund --loglevel=error && BELLHOP_BIN=$(abspath $(TARGET_DIR))/debug/bellhop npm test

k6-smoke: ## a short k6 run against a node it starts: a guest's requests reach housekeeping, with the delivery thresholds (loadtest/k6/)
	$(CARGO) build -q -p bellhop
	@loadtest/k6/smoke.sh $(TARGET_DIR)/debug/bellhop

k6: deps ## the k6 scenarios: chat, fan-out, connect storm against a node it starts (loadtest/k6/, about 2 minutes once built)
	$(CARGO) build --release -p bellhop
	@status=0; for s in chat fanout connect-storm; do \
	  loadtest/k6/run.sh $$s $(TARGET_DIR)/release/bellhop || { status=1; echo "k6: $$s FAILED"; }; \
	done; exit $$status

bench-deps: test-deps ## what `make bench` needs: redis-server, nats-server (apt), Socket.IO and its Redis adapter (npm ci in bench/peers/socketio)
	@bench/peers/install.sh

bench: bench-deps ## the side-by-side benchmark: Bellhop, NATS and Socket.IO on every workload, and the ceiling server on fan-out; every scenario once, the headline's measurements 3 times (medians with spread); rewrites docs/BENCHMARKS.md (about 17 minutes on a quiet machine: measured 16 min 53 s in all on 1 December 2026, run 1 6.4 min and the repeats 4.6 min each; 22 min 20 s on a slower host, and more on a loaded one; the report gives the wall time of each run)
	$(CARGO) build --release -p bellhop -p bellhop-loadgen
	$(TARGET_DIR)/release/bellhop-loadgen bench --bellhop $(TARGET_DIR)/release/bellhop --runs 3 $(BENCH_ARGS)

bench-quick: bench-deps ## the same benchmark with small workloads and 2 runs (about 7 minutes), written to target/bench-quick/ instead of docs/
	$(CARGO) build --release -p bellhop -p bellhop-loadgen
	$(TARGET_DIR)/release/bellhop-loadgen bench --bellhop $(TARGET_DIR)/release/bellhop --doc target/bench-quick/BENCHMARKS.md --out target/bench-quick/bench --runs 2 \
	  --idle-connections 2000 --fanout-subscribers 200 --fanout-rates 50,200 --fanout-step-seconds 2 \
	  --chat-rooms 200 --chat-rates 1000,2500 --chat-seconds 3 --storm-clients 500 --storm-rate 200 $(BENCH_ARGS)

# Every tool `make test` needs is installed by it, so a missing one fails the run rather than
# skipping a check (BELLHOP_REQUIRE_TOOLS, exported to every recipe it runs).
test: export BELLHOP_REQUIRE_TOOLS = 1
test: lint unit sdk-ts console conformance k6-smoke deploy-test ## everything CI runs: lint, every test suite, the TypeScript SDK's tests, the conformance runs, a k6 smoke, the deployment checks

image: deps ## the container image bellhop:dev (deploy/Dockerfile): release build, dockerd started if needed, a local Debian base (docs/KUBERNETES.md)
	$(CARGO) build --release -p bellhop
	@deploy/image.sh

image-smoke: image ## run the image and serve a client through it (deploy/image-smoke.sh)
	@deploy/image-smoke.sh

manifest-run: image ## the chart's rendered Deployment container run by docker as the kubelet would, timed to its probes, serving a client (deploy/checks/manifest-run.py)
	@deploy/tools.sh helm pyyaml redis
	@python3 deploy/checks/manifest-run.py --image $${IMAGE:-bellhop:dev} --bellhop $(TARGET_DIR)/release/bellhop

deploy-test: dockerfile-lint chart-test rules-test observability-test ## the deployment checks: Dockerfile lint, Helm chart, alert rules, dashboard and alerts against a live node (tools installed into .tools/)

dockerfile-lint: ## hadolint deploy/Dockerfile
	@deploy/tools.sh hadolint
	hadolint deploy/Dockerfile
	@echo "hadolint deploy/Dockerfile: no findings"

chart-test: ## helm lint, helm template with every helm/bellhop/ci values file, Kubernetes schemas (two versions), schema refusals, rendered-object assertions
	@helm/test.sh

rules-test: ## promtool check rules and promtool test rules on deploy/prometheus/alerts.yml
	@deploy/prometheus/test.sh

observability-test: ## a real node, Redis, Prometheus and Alertmanager: every dashboard query returns data, an alert reaches a webhook when Redis dies
	$(CARGO) build -q -p bellhop
	@deploy/grafana/typecheck.sh
	@deploy/tools.sh pyyaml prometheus alertmanager redis
	@python3 deploy/checks/observability.py --bellhop $(TARGET_DIR)/debug/bellhop

fuzz: ## run every fuzz target for FUZZ_SECONDS (60) each; needs a nightly toolchain, installs cargo-fuzz (docs/FUZZING.md)
	fuzz/run.sh $(FUZZ_SECONDS)

fuzz-smoke: ## the short fuzz run `make test` does (FUZZ_SMOKE_SECONDS, 15 s per target); skips without nightly
	@fuzz/run.sh --smoke $(FUZZ_SMOKE_SECONDS)

fuzz-seeds: ## regenerate the committed seed corpus (fuzz/seeds) after a protocol change
	$(CARGO) run --quiet --manifest-path fuzz/Cargo.toml --bin seeds -- fuzz/seeds

autobahn: ## the Autobahn WebSocket testsuite against an echoing node; needs Python 2.7 (docs/AUTOBAHN.md; AUTOBAHN_DOC=docs/AUTOBAHN.md records the run)
	tests/autobahn/run.sh $(if $(AUTOBAHN_DOC),--doc $(AUTOBAHN_DOC))

clean: ## remove build output
	$(CARGO) clean
