# tinyfusion-replication: `make reproduce` runs the whole study, `make test` runs the tests.
# Also: `make robustness` (notebook 11, its own clock), `make scale` (notebook 12), `make mar` (notebook 13, its own clock), `make notebook NB=07` (one notebook), `make lab [LAB_ARGS="--port=8890 --ip=0.0.0.0 --no-browser"]`,
# `make screenshots [SHOTS_ARGS="--all --height 16000 --split 2400"]` (the executed notebooks as JupyterLab shows them).
PROFILE ?= cpu
NB ?=
RUNGS ?=
LAB_ARGS ?=
SHOTS_ARGS ?=
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data reproduce robustness scale mar notebook test lab screenshots clean-results

setup: $(STAMP) data

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is needed to build .venv (found " + sys.version.split()[0] + ")")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "error: could not create $(VENV) (is python3-venv installed?)"; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e . || { echo "error: pip could not install the pinned packages of pyproject.toml (needs the package registry)"; exit 1; }
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

# Debian ships Fashion-MNIST as dataset-fashion-mnist; install it where apt exists, else explain.
data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ] || [ -n "$$TINYFUSION_DATA" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)) \
	  || { echo "error: apt-get could not install dataset-fashion-mnist; set TINYFUSION_DATA to a folder with the Fashion-MNIST IDX files"; exit 1; }; \
	else echo "note: Fashion-MNIST not found in $(FMNIST) and apt-get is not usable; set TINYFUSION_DATA to a folder with the IDX .gz files"; fi

reproduce: setup
	$(PY) -m tinyfusion.cli.reproduce --profile $(PROFILE)

# The robustness study (notebook 11: gate budget, a second teacher, SiT under the DiT rules), its own from-empty clock
# (results/<profile>/robustness_clock.json); it reuses every step make reproduce cached.
robustness: setup
	$(PY) -m tinyfusion.cli.reproduce --profile $(PROFILE) --study robustness

# The scale ladder (notebook 12: today's teacher, width 128, 49 tokens) on the profile's rungs, its own from-empty clock
# (results/<profile>/scale_clock.json); needs the rung teachers data/teacher_cpu_w128.pt and data/teacher_cpu_t49.pt
# (python -m tinyfusion.cli.pretrain --profile cpu-w128, ... cpu-t49); the smoke ladder pre-trains its own.
# RUNGS=cpu,cpu-w128: part of the ladder (a rung whose teacher is shipped while another trains), clocked; its tables,
# figures and summary.md section (marked as part) stand until the whole ladder runs.
scale: setup
	$(PY) -m tinyfusion.cli.reproduce --profile $(PROFILE) --study scale $(if $(RUNGS),--rungs '$(RUNGS)')

# TinyMAR (notebook 13: paper Table 2's MAR row, claim 10) on the profile's "-mar" variant (smoke, cpu), its own from-empty
# clock (results/<profile>/mar_clock.json); needs the MAR teacher data/mar_teacher_cpu.pt.
mar: setup
	$(PY) -m tinyfusion.cli.reproduce --profile $(PROFILE) --study mar

# One notebook (or several: NB=00,06), run and saved as make reproduce does it.
notebook: setup
	@test -n "$(NB)" || { echo "usage: make notebook NB=07 [PROFILE=$(PROFILE)]   (NB: a notebook number, or a list: NB=00,06)"; exit 2; }
	$(PY) -m tinyfusion.cli.reproduce --profile $(PROFILE) --only $(NB)

# Unit and torchrun tests, and nbval over every notebook on the smoke profile, as two pytest processes side by side
# (tools/run_tests.py; TEST_ARGS: more pytest options, e.g. --durations=25, or --serial); results go to temp folders.
TEST_ARGS ?=
test: setup
	@$(PY) tools/run_tests.py $(TEST_ARGS)

# JupyterLab on notebooks/ (--allow-root when run as root, as in Docker); LAB_ARGS: more options, e.g. --port=8890.
lab: setup
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS) notebooks/

# Optional: PNGs of the executed notebooks and summary.md rendered by JupyterLab in headless chromium, in /tmp/lab_shots
# (SHOTS_ARGS: options of tools/lab_screenshots.py, e.g. --all, --out DIR, --height 16000 --split 2400). Installs
# Debian's chromium package with apt-get when no chromium is on PATH (root), else says what to install.
screenshots: setup
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian's chromium (apt-get install -y chromium)"; \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) \
	  || { echo "error: apt-get could not install chromium"; exit 1; }; \
	else echo "error: chromium not found; install Debian's chromium package (apt-get install chromium) as root"; exit 1; fi
	$(PY) tools/lab_screenshots.py $(SHOTS_ARGS)

clean-results:
	rm -rf results/$(PROFILE)
