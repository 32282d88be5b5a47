# gpufleet: the commands README names. Each is a thin wrapper over scripts/.
.PHONY: demo setup test lab-up lab-down lab-status unit lint diagrams

LAB_NODES ?= 3

## demo: set everything up, start a 3-node lab and run playbooks/site.yml on it
demo:
	scripts/demo

## setup: Debian packages (as root), dockerd, .venv, the lab image
setup:
	scripts/setup

## test: every gate (lint, sanity, pytest, molecule); what CI runs
test:
	scripts/test

lab-up: setup
	scripts/lab up $(LAB_NODES)

lab-down:
	scripts/lab down

lab-status:
	scripts/lab status

## unit: the fast Python tests only
unit: setup
	GATES=pytest scripts/test tests/unit

lint: setup
	GATES=ruff,ansible-lint,sanity scripts/test

## diagrams: re-render docs/diagrams/*.svg from their Graphviz sources
diagrams:
	scripts/render-diagrams
