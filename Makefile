# guardlake: every set-up step lives here, so a fresh machine needs only `make demo` / `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

EMULATOR_PORT ?= 4599
EMULATOR_URL := http://127.0.0.1:$(EMULATOR_PORT)
# One pid and log file per port: backends on two ports from one checkout start and stop apart.
EMULATOR_PID := .emulator-$(EMULATOR_PORT).pid
EMULATOR_LOG := .emulator-$(EMULATOR_PORT).log
VENV := .venv
PY := $(VENV)/bin/python
# checkov pins its own boto3, so it lives in a venv of its own.
CHECKOV_VENV := .venv-checkov
CARGO ?= cargo
# Where cargo puts what it builds: ./target, or $CARGO_TARGET_DIR when it is set (a shared cache).
TARGET_DIR := $(abspath $(or $(CARGO_TARGET_DIR),target))
# The debug binary that make test, make test-py and make demo run.
DEBUG_BIN := $(TARGET_DIR)/debug/guardlake
# Packaging: cargo-zigbuild links against glibc 2.34 (Amazon Linux 2023) with zig from PyPI.
TOOLS := .tools
ZIGBUILD := $(TOOLS)/bin/cargo-zigbuild
ZIGBUILD_VERSION := 0.24.1
PACKAGE_TARGET := x86_64-unknown-linux-gnu
GLIBC_MAX := 2.34
DIST := dist
# make deploy: where the package goes and what the stacks are called.
STACK ?= guardlake
# make deploy-members: IAM is global, so the StackSet needs one region only.
MEMBER_REGION ?= us-east-1
CODE_KEY ?= guardlake/lambda-$(shell git rev-parse --short HEAD 2>/dev/null || echo dev).zip

# The AWS SDK reads these; the fake credentials resolve to moto's default account 123456789012.
AWS_ENV := AWS_ENDPOINT_URL=$(EMULATOR_URL) AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
	AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true GUARDLAKE_TEST_ENDPOINT=$(EMULATOR_URL)

.PHONY: help venv browser build emulator emulator-stop test test-rust test-py lint demo bench bench-scale schemas infra package deploy deploy-preflight deploy-members clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: tests/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r tests/requirements.txt
	touch $@

$(CHECKOV_VENV)/.installed: tests/requirements-checkov.txt
	python3 -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet -r tests/requirements-checkov.txt
	touch $@

venv: $(VENV)/.installed $(CHECKOV_VENV)/.installed ## Create the Python venvs of the test backend and checks

browser: ## Headless Chromium (Debian's chromium-headless-shell) for the coverage page's browser test
	@command -v chromium-headless-shell >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium-headless-shell; }

build: ## Build guardlake (debug)
	$(CARGO) build --all-targets

emulator: $(VENV)/.installed ## Start the local AWS backend on 127.0.0.1:$(EMULATOR_PORT)
	@EMULATOR_PORT=$(EMULATOR_PORT) PY=$(PY) PIDFILE=$(EMULATOR_PID) LOG=$(EMULATOR_LOG) tests/emulator/start.sh

emulator-stop: ## Stop the local AWS backend on $(EMULATOR_PORT)
	@EMULATOR_PORT=$(EMULATOR_PORT) PIDFILE=$(EMULATOR_PID) tests/emulator/stop.sh

lint: ## cargo fmt --check, clippy -D warnings, and the shape rules of src/ (no import cycle, no function over 80 lines)
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	python3 tests/code_shape.py

test: venv browser lint build ## Every test: lint, Rust unit + integration tests, backend fidelity tests
	@$(MAKE) --no-print-directory emulator
	@set -o pipefail; status=0; \
	  $(AWS_ENV) $(CARGO) test --all-targets -- --test-threads=1 || status=$$?; \
	  if [ $$status -eq 0 ]; then $(AWS_ENV) GUARDLAKE_BIN=$(DEBUG_BIN) $(PY) -m pytest -q tests/py || status=$$?; fi; \
	  $(MAKE) --no-print-directory emulator-stop; exit $$status

test-rust: ## Rust tests only (needs `make emulator`)
	$(AWS_ENV) $(CARGO) test --all-targets -- --test-threads=1

test-py: ## Backend and lake checks only (needs `make emulator`)
	$(AWS_ENV) GUARDLAKE_BIN=$(DEBUG_BIN) $(PY) -m pytest -q tests/py

demo: venv ## The job end to end on the local backend, into ./lake, then an SQL query over it
	$(CARGO) build
	@$(MAKE) --no-print-directory emulator
	@set -o pipefail; status=0; \
	  $(AWS_ENV) EMULATOR_PORT=$(EMULATOR_PORT) PY=$(PY) GUARDLAKE_BIN=$(DEBUG_BIN) tests/demo/run.sh || status=$$?; \
	  $(MAKE) --no-print-directory emulator-stop; exit $$status

schemas: venv ## Regenerate schemas/guardduty/finding.schema.json and schemas/README.md from the service model
	$(PY) tests/schemas/generate_finding_schema.py

infra: venv ## Regenerate infra/hub.yaml (Glue tables from schemas/, named queries from infra/sql/) and lint it
	$(PY) tests/schemas/generate_infra.py
	$(VENV)/bin/cfn-lint infra/hub.yaml infra/member-role.yaml || [ $$(( $$? & 2 )) -eq 0 ]

bench: venv ## Findings (read_page + encode, 1 and 2 threads) on 120k findings; org-trail library loop and `guardlake run` (1 and 2 threads) vs DuckDB at 1x/10x; → bench/results.txt
	$(CARGO) bench --bench normalize_encode -- --findings 120000 --out bench/results.txt
	$(PY) tests/bench/orgtrail_vs_duckdb.py
	# With the benches, so the binary shares the benches' dependency features (no second build).
	$(CARGO) build --release --bin guardlake --bench normalize_encode --bench orgtrail
	@$(MAKE) --no-print-directory emulator
	@set -o pipefail; status=0; \
	  $(AWS_ENV) GUARDLAKE_RELEASE_BIN=$(TARGET_DIR)/release/guardlake $(PY) tests/bench/product.py || status=$$?; \
	  $(MAKE) --no-print-directory emulator-stop; exit $$status

bench-scale: venv ## One process vs a distributed run (1/2/4 shard processes), 200 accounts x 4 regions, 100 ms latency per call → bench/scale.txt
	@$(MAKE) --no-print-directory emulator
	@set -o pipefail; status=0; \
	  $(AWS_ENV) $(PY) tests/bench/scale.py || status=$$?; \
	  $(MAKE) --no-print-directory emulator-stop; exit $$status

$(ZIGBUILD):
	$(CARGO) install cargo-zigbuild --locked --version $(ZIGBUILD_VERSION) --root $(TOOLS)

package: venv $(ZIGBUILD) ## Build dist/bootstrap.zip for Lambda (provided.al2023, x86_64), check glibc <= 2.34, run it as a Lambda
	PATH="$(abspath $(VENV))/bin:$$PATH" $(ZIGBUILD) zigbuild --release --bin guardlake --target $(PACKAGE_TARGET).$(GLIBC_MAX)
	@mkdir -p $(DIST) && cp $(TARGET_DIR)/$(PACKAGE_TARGET)/release/guardlake $(DIST)/bootstrap
	@tests/package/check_glibc.sh $(DIST)/bootstrap $(GLIBC_MAX)
	@$(DIST)/bootstrap --version && $(DIST)/bootstrap --help >/dev/null && echo "bootstrap starts"
	@rm -f $(DIST)/bootstrap.zip && cd $(DIST) && $(abspath $(PY)) -m zipfile -c bootstrap.zip bootstrap
	@ls -l $(DIST)/bootstrap.zip
	@rm -rf $(DIST)/unpacked && $(PY) tests/package/unpack.py $(DIST)/bootstrap.zip $(DIST)/unpacked
	@echo "the packaged bootstrap serves Lambda invocations (local Runtime API, local AWS backend):"
	@$(MAKE) --no-print-directory emulator
	@set -o pipefail; status=0; \
	  $(AWS_ENV) GUARDLAKE_BIN=$(abspath $(DIST))/unpacked/bootstrap $(PY) -m pytest -q tests/py/test_lambda.py || status=$$?; \
	  $(MAKE) --no-print-directory emulator-stop; exit $$status

deploy-preflight:
	@command -v aws >/dev/null || { echo "make deploy needs the AWS CLI (aws) with credentials of the hub account" >&2; exit 2; }
	@test -n "$(CODE_BUCKET)" || { echo "make deploy needs CODE_BUCKET=<bucket for the package> and EXTERNAL_ID=<id>" >&2; exit 2; }
	@test -n "$(EXTERNAL_ID)" || { echo "make deploy needs EXTERNAL_ID=<the member roles' external id>" >&2; exit 2; }

deploy: deploy-preflight package ## Package, upload and deploy the hub stack (needs AWS credentials; see README "Deploy")
	aws s3 cp $(DIST)/bootstrap.zip s3://$(CODE_BUCKET)/$(CODE_KEY)
	aws cloudformation deploy --stack-name $(STACK) --template-file infra/hub.yaml \
	  --capabilities CAPABILITY_NAMED_IAM --no-fail-on-empty-changeset \
	  --parameter-overrides CodeBucket=$(CODE_BUCKET) CodeKey=$(CODE_KEY) ExternalId=$(EXTERNAL_ID) \
	    OrganizationId=$${ORG_ID:-$$(aws organizations describe-organization --query Organization.Id --output text)} $(PARAMS)
	aws cloudformation describe-stacks --stack-name $(STACK) --query "Stacks[0].Outputs" --output table

deploy-members: ## Deploy infra/member-role.yaml to OUs as a service-managed StackSet (management-account credentials)
	@command -v aws >/dev/null || { echo "make deploy-members needs the AWS CLI (aws) with credentials" >&2; exit 2; }
	@test -n "$(HUB_ACCOUNT)" -a -n "$(EXTERNAL_ID)" -a -n "$(TARGET_OUS)" || { \
	  echo "make deploy-members needs HUB_ACCOUNT=<hub account id> EXTERNAL_ID=<id> TARGET_OUS=<r-xxxx or ou-... ids, comma-separated>" >&2; exit 2; }
	@params="ParameterKey=HubAccountId,ParameterValue=$(HUB_ACCOUNT) ParameterKey=ExternalId,ParameterValue=$(EXTERNAL_ID)"; \
	if aws cloudformation describe-stack-set --stack-set-name $(STACK)-member-role >/dev/null 2>&1; then \
	  aws cloudformation update-stack-set --stack-set-name $(STACK)-member-role --template-body file://infra/member-role.yaml \
	    --capabilities CAPABILITY_NAMED_IAM --parameters $$params; \
	else \
	  aws cloudformation create-stack-set --stack-set-name $(STACK)-member-role --template-body file://infra/member-role.yaml \
	    --capabilities CAPABILITY_NAMED_IAM --permission-model SERVICE_MANAGED \
	    --auto-deployment Enabled=true,RetainStacksOnAccountRemoval=false --parameters $$params && \
	  aws cloudformation create-stack-instances --stack-set-name $(STACK)-member-role \
	    --deployment-targets OrganizationalUnitIds=$(TARGET_OUS) --regions $(MEMBER_REGION); \
	fi

clean: emulator-stop ## Remove build output, the venvs, the package and the demo lake
	rm -rf target $(VENV) $(CHECKOV_VENV) $(TOOLS) $(DIST) lake
