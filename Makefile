# Quick start: `make serve` runs the service, `make test` runs the tests. Both install into .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
STAMP := $(VENV)/.installed
TEST_TOOLS := $(VENV)/.test-tools
REDIS_TOOLS := $(VENV)/.redis-tools
# `make serve GATEWAYS=3 STATE=redis`: several gateways sharing keys, limits and usage through one Redis
REDIS_IF_NEEDED := $(if $(filter redis,$(STATE)),$(REDIS_TOOLS))
STATE_ARGS := $(if $(filter redis,$(STATE)),--state redis)
export OPENCV_IO_MAX_IMAGE_PIXELS ?= 1073741824

LOCK := requirements/lock.txt

.PHONY: install lock lock-upgrade export fixtures serve test check key demo bench bench-quick bench-tools deploy-check \
	images container-test clean

# Exactly the lock (versions and hashes), then the project itself; nothing resolves a version here. requirements/
$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || (echo "installing python3-venv"; apt-get update -qq && apt-get install -y -qq python3-venv)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[install] installing $(LOCK) into $(VENV) (first run: a few minutes) ..."
	@$(PY) requirements/lockfile.py sync
	@touch $@

install: $(STAMP)

# Re-resolve the lock after changing pyproject.toml (existing pins are kept); lock-upgrade moves every package to its
# newest allowed release, for a deliberate upgrade followed by `make install check test container-test`.
lock: install
	$(PY) requirements/lockfile.py compile

lock-upgrade: install
	$(PY) requirements/lockfile.py compile --upgrade

# The live-stream tests' sources (tests/sources.py): ffmpeg serves HLS and MJPEG, GStreamer's RTSP server serves RTSP.
RTSP_PROBE := import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer
# The browser test drives Debian's Chromium (Playwright cannot download browsers offline); curl runs the README example.
$(TEST_TOOLS): $(STAMP) $(REDIS_TOOLS)
	@command -v chromium >/dev/null && command -v curl >/dev/null || \
		(echo "[install] installing chromium and curl (apt)"; apt-get update -qq && \
		 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium curl >/dev/null)
	@command -v ffmpeg >/dev/null && /usr/bin/python3 -c "$(RTSP_PROBE)" 2>/dev/null || \
		(echo "[install] installing ffmpeg and GStreamer's RTSP server (apt)"; apt-get update -qq && \
		 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 \
		 gstreamer1.0-plugins-base gstreamer1.0-plugins-good >/dev/null)
	@touch $@

# Debian's Redis 7 server (security updates from Debian; the same binary the Redis-mode tests start).
$(REDIS_TOOLS): $(STAMP)
	@command -v redis-server >/dev/null || (echo "[install] installing redis-server (apt)"; apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null)
	@touch $@

export: install
	$(PY) -m export defaults $(EXPORT_ARGS)

fixtures: install
	$(PY) -m export fixtures $(EXPORT_ARGS)

serve: install $(REDIS_IF_NEEDED)
	$(PY) -m tritonlocal.serve --host $(HOST) --port $(PORT) $(if $(GATEWAYS),--gateways $(GATEWAYS)) $(STATE_ARGS) $(SERVE_ARGS)

test: install $(TEST_TOOLS)
	$(PY) -m pytest $(PYTEST_ARGS)

# The quality gate CI runs before the tests: formatting, lint, strict types.
CHECKED := gateway export tritonlocal bench yolo_triton_client tests deploy requirements
check: install
	$(PY) requirements/lockfile.py check
	$(VENV)/bin/ruff format --check $(CHECKED)
	$(VENV)/bin/ruff check $(CHECKED)
	$(VENV)/bin/mypy gateway export tritonlocal bench yolo_triton_client requirements/lockfile.py

key: install
	@$(PY) -m gateway.keys $(STATE_ARGS) create --name "$${NAME:-key-$$(date +%Y%m%d-%H%M%S)}" \
		$(if $(filter 1 yes true,$(ADMIN)),--admin) $(if $(RATE),--rate $(RATE)) $(if $(MODELS),--models $(MODELS))

demo: install
	@$(PY) -m tritonlocal.demo --url http://$(HOST):$(PORT) $(DEMO_ARGS)

bench: install
	$(PY) -m bench run $(BENCH_ARGS)
	$(PY) -m bench cost

bench-quick: install
	$(PY) -m bench run --quick $(BENCH_ARGS)

# Triton's perf_analyzer for `--modes ...,perf-analyzer` (downloads under .triton/perf-analyzer, apt-installs libb64-0d).
bench-tools: install
	$(PY) -m bench tools

deploy-check: install
	$(PY) deploy/check.py

# The gateway, CPU Triton and Redis images without a registry; starts (and stops) a Docker engine if none runs.
# deploy/README.md
images: install
	$(PY) deploy/containers.py images

container-test: install $(TEST_TOOLS)
	$(PY) deploy/containers.py test $(PYTEST_ARGS)

clean:
	rm -rf .triton .pytest_cache build *.egg-info
	find model_repository -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
