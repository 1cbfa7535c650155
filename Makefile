.PHONY: up test lint bench down

# Install, start the server, build the tiny image and boot a first VM.
up:
	scripts/up.sh

# The whole test suite (unit, contract, integration, e2e).
test:
	scripts/test.sh

lint:
	.venv/bin/ruff check src tests bench
	.venv/bin/mypy src

bench:
	.venv/bin/python bench/boot_times.py

# Stop the server `make up` started (VMs keep running under libvirt).
down:
	@pid=$$(cat $${FLEXVM_HOME:-/var/lib/flexvm}/server.pid 2>/dev/null) && kill $$pid && echo "stopped flexvm server (pid $$pid)" || echo "no server pid file"
