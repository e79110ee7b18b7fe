# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test bench mutate mutate-sample breakages clean browser

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/bodycam demo --out demo-output

test: $(STAMP) browser
	$(PY) -m pytest

# The export report is checked as a person sees it, in headless Chromium (Debian's package).
# Installed when missing and we may (root with apt-get, as in CI); otherwise that test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ; } || \
	  echo "note: no chromium (not root, or no apt-get): the HTML report's browser test will be skipped"

bench: $(STAMP)
	$(PY) -m bench

# Mutation testing of the security-critical code (TESTING.md); not part of `make test`.
# MUTANTS narrows a run, e.g. make mutate MUTANTS='secure_store.verify.*'
# Niced, one child by default: a shared 2-core machine stays usable (MUTATE_CHILDREN=2 when it is yours).
MUTATE_CHILDREN ?= 1
MUTANTS ?= secure_store.verify.* secure_store.segment_rules.* secure_store.audit_verify.* link.session.* dock.client.* \
	secure_store.store.xǁEvidenceStoreǁrelease__* firmware.update.install.*
mutate: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,mutate]'
	-nice -n 19 $(VENV)/bin/mutmut run --max-children $(MUTATE_CHILDREN) $(foreach m,$(MUTANTS),'$(m)')
	$(PY) tests/mutation/report.py $(foreach m,$(MUTANTS),'$(m)') > mutation-report.txt
	head -n 9 mutation-report.txt

# A seeded random sample of MUTATE_SAMPLE mutants per module (TESTING.md): the score in under an hour.
MUTATE_SAMPLE ?= 110
MUTATE_SEED ?= 20261130
mutate-sample: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,mutate]'
	-nice -n 19 $(VENV)/bin/mutmut run --max-children $(MUTATE_CHILDREN) 'none.of.the.mutants'   # generates them
	$(PY) tests/mutation/sample.py $(MUTATE_SAMPLE) $(MUTATE_SEED) $(foreach m,$(MUTANTS),'$(m)') > mutants/sample.txt
	-nice -n 19 $(VENV)/bin/mutmut run --max-children $(MUTATE_CHILDREN) $$(cat mutants/sample.txt)
	$(PY) tests/mutation/report.py $$(cat mutants/sample.txt) > mutation-report.txt
	head -n 9 mutation-report.txt

# Each check TESTING.md names broken by hand, one at a time: the test it names must fail.
# Edits the working tree while each test runs (always restored): not while you edit.
breakages: $(STAMP)
	$(PY) tests/mutation/breakages.py .

clean:
	rm -rf $(VENV) demo-output *.egg-info mutants mutation-report.txt
