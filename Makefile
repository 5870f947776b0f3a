# The two commands a newcomer needs: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test bench system-deps clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $@

# QEMU's vhost-user-gpu is the real virtio-gpu device the display driver is tested against;
# tmux is the real terminal `ggmk top` is tested in.
system-deps:
	@need() { [ -n "$$1" ] && command -v apt-get >/dev/null || return 0; echo "installing $$2"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$2 >/dev/null) \
	    || echo "warning: could not install $$2; the tests that need it will be skipped"; }; \
	need "$$([ -x /usr/lib/qemu/vhost-user-gpu ] || echo 1)" qemu-system-gui; \
	need "$$(command -v tmux >/dev/null || echo 1)" tmux

# the CPU kernel's workload in-process (tables per type, queues, arena, accounting), then both
# kernels operated from a shell (src/ggmk/demo/tour.py): ggmk boot examples/dual_app.py
# --device auto (cuda on a GPU machine, else the GPU kernel's cpu target; the first run builds
# the GPU kernel, ~100 s, cached after), emit across the bridge both ways with payloads, ps,
# kern info, chan ls, 3 s of top, trace --perfetto, halt
demo: $(VENV)/.installed
	$(PY) -m ggmk.demo
	$(PY) -m ggmk.demo.tour

# two test processes (pytest-xdist), each taking whole files (module fixtures stay shared):
# the suite is mostly one busy thread at a time, so on 2 cores this halves its time; then the
# files marked `serial` (CPU shares between real threads) alone
test: $(VENV)/.installed system-deps
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not serial" --durations=20
	$(PY) -m pytest -q -m serial --durations=5

bench: $(VENV)/.installed
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ggmk-cache
