# Quick start: `make serve` (serves the committed models on http://127.0.0.1:8000), `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstalled whenever pyproject.toml changes or the venv is missing or broken.
STAMP := $(VENV)/.installed
DATA ?= ../shared/data/mnist-train.npz
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: venv serve test test-slow lint train bench soak figures deploy-check docker-smoke clean

$(STAMP): pyproject.toml
	@$(BIN)/python -c "import sys" 2>/dev/null || (rm -rf $(VENV) && $(PYTHON) -m venv $(VENV))
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,deploy,train]"
	@touch $(STAMP)

venv: $(STAMP)

serve: $(STAMP)
	$(BIN)/python -m app --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

test-slow: $(STAMP)
	DIGITS_MNIST=$(DATA) $(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check .

train: $(STAMP)
	$(BIN)/python -m training --style all --data $(DATA)

# Needs wrk and, for Triton's perf_analyzer, libb64: apt-get install wrk libb64-0d.
bench: $(STAMP)
	$(BIN)/python -m bench.run

# A minute of load in which 5% of requests are hostile (bench/soak.py).
soak: $(STAMP)
	$(BIN)/python -m bench.soak

figures: $(STAMP)
	$(BIN)/python -m scripts.preprocessing_figure --data $(DATA)
	$(BIN)/python -m scripts.realworld_figure --data $(DATA)
	$(BIN)/python -m scripts.page_screenshot

# Lint the Dockerfile, validate the compose file for every profile with Compose's own
# parser, and the Kubernetes manifests against their schemas, offline.
COMPOSE = $(shell $(BIN)/python -c 'import compose, os; print(os.path.dirname(compose.__file__))' 2>/dev/null)/docker-compose
deploy-check: $(STAMP)
	$(BIN)/hadolint Dockerfile
	$(COMPOSE) config --quiet
	$(COMPOSE) --profile gpu config --quiet
	$(COMPOSE) --profile train config --quiet
	$(COMPOSE) -f docker-compose.yml -f deploy/compose.smoke.yml config --quiet
	$(BIN)/kubernetes-validate --strict deploy/k8s/*.yaml

docker-smoke: $(STAMP)
	scripts/docker-smoke.sh

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
