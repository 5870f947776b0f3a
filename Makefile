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

# QEMU's vhost-user-gpu is the real virtio-gpu device the display driver is tested against.
system-deps:
	@if [ ! -x /usr/lib/qemu/vhost-user-gpu ] && command -v apt-get >/dev/null; then \
	  echo "installing qemu-system-gui (vhost-user-gpu)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-gui >/dev/null) \
	    || echo "warning: could not install qemu-system-gui; virtio-gpu tests will be skipped"; \
	fi

demo: $(VENV)/.installed
	$(PY) -m ggmk.demo

test: $(VENV)/.installed system-deps
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ggmk-cache
