# The two commands of the README, and the pieces they are made of.
# Cargo's target dir lives outside the clone so CI and fresh clones reuse it.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/kubernaut/target

.PHONY: demo test bench loadtest image stack stack-down lint unit e2e crds toolchain

## The main job: local stack, control plane, a demo alert storm, the result table.
demo: stack
	bash scripts/demo.sh

## Every test: formatting, lints, generated files, unit and end-to-end tests.
test: toolchain stack lint image
	# The process-level tests run the binary (tests/src: kubernaut_binary).
	cargo build -p kubernaut --bin kubernaut
	cargo nextest run --workspace --no-fail-fast

## Every performance figure, measured here, into docs/performance.md (~35 min).
bench: toolchain stack
	bash loadtest/bench.sh

## The default storm scenario end to end; the report goes to $(CARGO_TARGET_DIR)/loadtest/.
loadtest: toolchain stack
	bash loadtest/storm.sh

## The container image, built without a daemon (buildah): localhost/kubernaut:VERSION,
## and archives for docker load / kind load / skopeo copy under $(CARGO_TARGET_DIR)/image.
image:
	bash scripts/image.sh build

stack:
	bash scripts/stack.sh up

stack-down:
	bash scripts/stack.sh down

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

crds:
	cargo run -q -p kubernaut -- crds > deploy/crds/remediationrequests.kubernaut.io.yaml
	cargo run -q -p kubernaut -- generic-schema > docs/generic-signal.schema.json
	{ sed -n '1,/^  config.yaml: |$$/p' deploy/base/config.yaml; sed 's/^./    &/' config/default.yaml; } > deploy/base/config.yaml.new
	mv deploy/base/config.yaml.new deploy/base/config.yaml

toolchain:
	@command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
