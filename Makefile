# Two commands for a newcomer: `make run` (the whole platform) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
API_PORT ?= 8000
# empty: SQLite files under var/; a PostgreSQL server URL (e.g. postgresql://postgres@127.0.0.1:5432)
# gives each service its own database on it (wuji_intake, wuji_triage, ...)
DATABASE_URL ?=
AMQP_URI ?= amqp://guest:guest@127.0.0.1:5672/

.PHONY: run test install clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt libs/*/pyproject.toml services/*/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip 'setuptools<81' wheel
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/python deploy/run_local.py --api-port $(API_PORT) --amqp-uri '$(AMQP_URI)' \
		$(if $(DATABASE_URL),--database-url '$(DATABASE_URL)')

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf var
