"""Waiting on operations with a deadline, polling often enough that fast fake operations stay fast."""

from __future__ import annotations

import time

from flexvm.model.operation import Operation
from flexvm.platform import Platform


def wait_done(platform: Platform, operation_id: str, timeout: float = 15.0) -> Operation:
    deadline = time.monotonic() + timeout
    while True:
        operation = platform.runner.get(operation_id)
        if operation.status.finished:
            return operation
        if time.monotonic() > deadline:
            raise AssertionError(f"operation {operation_id} still {operation.status.value} after {timeout} s")
        time.sleep(0.01)
