# Two commands for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := redis-server prometheus chromium
BENCH_PACKAGES := wrk haproxy nginx

.PHONY: demo test soak bench bench-picker bench-routing lint build system-deps clean

$(STAMP): pyproject.toml setup.py ext/picker.pyx ext/hashring.pyx ext/traceids.pyx ext/h2.pyx
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel Cython
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

build: $(STAMP)
	$(BIN)/python setup.py -q build_ext --inplace

# Tests use real Redis, promtool, Chromium and htpasswd (basic-auth fixtures): install them when
# absent (CI starts bare).
# lb._h2 (HTTP/2) builds against libnghttp2-dev; h2load (nghttp2-client) loads HTTP/2.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	test -f /usr/include/nghttp2/nghttp2.h || missing="$$missing libnghttp2-dev"; \
	command -v h2load >/dev/null || missing="$$missing nghttp2-client"; \
	command -v htpasswd >/dev/null || missing="$$missing apache2-utils"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# The data path's tests once more on its pure-Python twin: both builds must behave alike.
TWIN_TESTS := tests/test_build.py tests/test_exchange_harness.py tests/test_proxy_basics.py \
	tests/test_proxy_bodies.py tests/test_proxy_errors.py tests/test_proxy_timers.py tests/test_proxy_websocket.py \
	tests/test_routing.py tests/test_traffic_retry.py tests/test_reload_atomic.py tests/test_fuzz.py \
	tests/test_http_version.py tests/test_h2_proxy.py tests/test_h2_upstream.py tests/test_tcp_proxy.py \
	tests/test_breaker.py tests/test_ratelimit.py tests/test_outlier.py tests/test_traffic_breaker.py \
	tests/test_traffic_ratelimit.py tests/test_traffic_outlier.py tests/test_edge_ipfilter.py \
	tests/test_edge_client_caps.py tests/test_edge_basic_auth.py tests/test_edge_jwt.py \
	tests/test_balance_hash.py tests/test_compress.py tests/test_mirror.py \
	tests/test_balance_latency.py tests/test_tracing.py

# system-deps before build: lb._h2 is only built where libnghttp2-dev is installed.
test: system-deps build
	$(BIN)/ruff check .
	LB_PURE_PYTHON=1 $(BIN)/python -m pytest -q -p no:cacheprovider $(TWIN_TESTS)
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The soak and fault suite in its long form (10-20 minutes); `make test` runs its short form.
soak: build system-deps
	LB_SOAK=long $(BIN)/python -m pytest -q -s -p no:cacheprovider -m soak tests

demo: build
	$(BIN)/python -m lb.demo configs/demo.yaml

bench: build
	$(BIN)/python bench/run.py --with-multicore --memory --h2
	$(BIN)/python bench/tcp_bench.py
	$(BIN)/python bench/picker_bench.py
	$(BIN)/python bench/hashring_bench.py
	$(BIN)/python bench/routing_bench.py

bench-picker: build
	$(BIN)/python bench/picker_bench.py
	$(BIN)/python bench/hashring_bench.py

bench-routing: build
	$(BIN)/python bench/routing_bench.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check lb tests bench

clean:
	rm -rf build $(VENV) lb/*.so ext/*.c *.egg-info
