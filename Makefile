# Shortcuts; each target is a script under scripts/ that works without make.
.PHONY: setup proto lint test demo bench
setup: ; ./scripts/setup
proto: ; ./scripts/gen-proto
lint: ; ./scripts/lint
test: ; ./scripts/test
demo: ; ./scripts/demo
bench: ; ./scripts/bench
