# kd_det2 — the two contract commands are `make test` and `make demo`; both install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kd_det2-installed
D2_VERSION := 0.7.2
DEPS := requirements.txt requirements-dev.txt requirements-nodeps.txt setup.py Makefile

.PHONY: install test demo lint format clean

install: $(STAMP)

$(STAMP): $(DEPS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	@$(PY) -c "import torch, sys; v = torch.__version__; sys.exit('torch %s is a +cpu build without a matching torchvision; reinstall torch==2.14.1 from the package index' % v if '+cpu' in v else 0)"
	@if $(PY) -c "import detectron2" 2>/dev/null; then \
		echo "detectron2 already importable: keeping it"; \
	else \
		echo "installing detectron2 $(D2_VERSION) (sal-detectron2 wheel, tagged cp310, installed tag-agnostically)"; \
		tmp=$$(mktemp -d) && \
		$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 \
			sal-detectron2==$(D2_VERSION) -d $$tmp && \
		$(PY) -m installer $$tmp/sal_detectron2-*.whl && rm -rf $$tmp; \
	fi
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@$(PY) -c "import kd_det2, detectron2, torch; print('kd_det2 ready: torch', torch.__version__, '| detectron2', detectron2.__version__)"
	@touch $(STAMP)

test: install
	$(PY) -m pytest tests -q -p no:cacheprovider --timeout 900

demo: install
	PYTHONUNBUFFERED=1 $(PY) tools/demo.py $(DEMO_ARGS)

lint: install
	$(PY) -m black --check -l 100 kd_det2 tools tests projects
	$(PY) -m isort --check-only --profile black -l 100 kd_det2 tools tests projects
	$(PY) -m flake8 --max-line-length 100 --extend-ignore E203,W503 kd_det2 tools tests projects

format: install
	$(PY) -m isort --profile black -l 100 kd_det2 tools tests projects
	$(PY) -m black -l 100 kd_det2 tools tests projects

clean:
	rm -rf $(VENV) output build *.egg-info
