# scaleout's front door. `make help` lists the targets; each is one line, and anything longer
# lives in infra/scripts/ or loadtest/.

.DEFAULT_GOAL := help
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help run migrate seed loadtest test services replica replica-down fmt lint check validate up down bench-gateway test-browser

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-15s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

run: ## The whole topology natively: gateway, 2 web, 2 mobile, relay and workers (http://127.0.0.1:8080)
	infra/scripts/run.sh

seed: ## Fill the running stack's database with a realistic data set (USERS, POSTS, COMMENTS)
	loadtest/seed.sh

loadtest: ## A short mixed k6 run against the running stack; report under loadtest/results/
	loadtest/loadtest.sh

migrate: services ## Create the database if missing and apply migrations
	$(CARGO) run --release --bin web -- migrate

test: services replica ## Run every test against the local Postgres (and its replica), Redis and RabbitMQ; the gateway's again on epoll
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
		GATEWAY_TEST_IO_URING=false $(CARGO) nextest run -p gateway --test proxy --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
		GATEWAY_TEST_IO_URING=false $(CARGO) test -p gateway --test proxy --no-fail-fast; \
	fi

test-browser: services ## End-to-end test in a real browser (Debian's Chromium) through the gateway of a private stack
	tests/browser/run.sh

services: ## Check that Postgres, Redis and RabbitMQ are reachable, and say how to start any that is not
	@infra/scripts/services.sh check

replica: ## Create (once) and start the local streaming replica on 127.0.0.1:5433
	@infra/scripts/replica.sh up

replica-down: ## Remove the local replica and its replication slot
	@infra/scripts/replica.sh down

fmt: ## Format all Rust code
	$(CARGO) fmt --all

lint: ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

check: lint test ## Everything CI checks

validate: ## Check the Dockerfile (hadolint) and docker-compose.yml (Compose schema) without Docker
	infra/scripts/validate.sh

up: ## Start the whole topology with docker compose (where Docker runs)
	docker compose up -d --wait

down: ## Stop them and delete their volumes
	docker compose down -v

bench-gateway: ## Benchmark the gateway against nginx and HAProxy (installs them if missing)
	loadtest/bench-gateway.sh
