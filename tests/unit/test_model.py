"""The model layer's pure rules: sizes in bytes, names, VM shapes and Azure's sizes, the power-state
rules of each action, and the error tree (status, code, Azure's error shape).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import flexvm
from flexvm import errors
from flexvm.errors import FlexvmError, InvalidInput, InvalidState
from flexvm.model.names import check_name, check_size_name
from flexvm.model.sizes import BUILTIN_SIZES, MAX_MEMORY_MIB, MAX_VCPUS, MIN_DISK_BYTES, MIN_MEMORY_MIB, check_shape
from flexvm.model.units import GIB, KIB, MIB, TIB, format_bytes, parse_bytes, parse_mib
from flexvm.model.vm import ALLOWED_FROM, PowerState, check_action

# --- units ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512M", 512 * MIB),
        ("2G", 2 * GIB),
        ("2GiB", 2 * GIB),
        ("2gb", 2 * GIB),
        ("1.5G", 3 * GIB // 2),
        ("1T", TIB),
        ("4K", 4 * KIB),
        ("0.5K", 512),
        (" 8 G ", 8 * GIB),
        ("123", 123),
        ("123B", 123),
    ],
)
def test_parse_bytes_reads_binary_units(text: str, expected: int) -> None:
    assert parse_bytes(text, "size") == expected


def test_parse_bytes_reads_a_bare_number_in_the_default_unit() -> None:
    assert parse_bytes("512", "memory", default_unit="M") == 512 * MIB
    assert parse_bytes(512, "memory", default_unit="M") == 512 * MIB
    assert parse_bytes(8, "disk", default_unit="G") == 8 * GIB
    assert parse_bytes(4096, "size") == 4096
    # An explicit unit wins over the default.
    assert parse_bytes("2G", "memory", default_unit="M") == 2 * GIB


def test_parse_bytes_explicit_bytes_are_bytes_even_with_a_default_unit() -> None:
    # "1024B" says bytes; it must not be read in the default unit (MiB here).
    assert parse_bytes("1024B", "memory", default_unit="M") == 1024


@pytest.mark.parametrize("text", ["", "abc", "12X", "G", "-1G", "1e3", "1,5G", "2 GG", "0x10", "1.5.2G", "5PB"])
def test_parse_bytes_refuses_what_is_not_a_size_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_bytes(text, "memory")
    assert caught.value.field == "memory"
    assert caught.value.details["field"] == "memory"
    assert caught.value.message.startswith("memory: ")
    assert caught.value.status == 400


def test_memory_is_whole_mib_and_a_bare_number_is_mib() -> None:
    assert [parse_mib(t, "memory") for t in ("512M", "1.5G", 768, "768")] == [512, 1536, 768, 768]
    with pytest.raises(InvalidInput) as caught:
        parse_mib("1000K", "reserved_memory")
    assert caught.value.field == "reserved_memory" and "whole number of MiB" in caught.value.message


def test_parse_bytes_refuses_fractions_of_a_byte() -> None:
    with pytest.raises(InvalidInput, match="whole number") as caught:
        parse_bytes("1.5", "disk")
    assert caught.value.field == "disk"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0B"),
        (1023, "1023B"),
        (KIB, "1K"),
        (512 * MIB, "512M"),
        (3 * GIB // 2, "1.5G"),
        (264212000000, "246.1G"),
        (2 * TIB, "2T"),
        (64 * MIB, "64M"),
    ],
)
def test_format_bytes(value: int, text: str) -> None:
    assert format_bytes(value) == text


@pytest.mark.parametrize("text", ["512M", "2G", "1.5G", "4K", "3T", "100B"])
def test_format_and_parse_round_trip(text: str) -> None:
    assert format_bytes(parse_bytes(text, "size")) == text


# --- names ---------------------------------------------------------------------------------

VALID_NAMES = ["a", "web1", "Web-1", "a-b-c", "x" * 64, "A0"]
BAD_NAMES = [
    "a'/><x",
    "$(id)",
    "../",
    "..",
    "",
    "x" * 65,
    "1abc",
    "-a",
    "a_b",
    "a b",
    "a/b",
    "a.b",
    "é",
    "web1\n",
    "\nweb1",
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_check_name_accepts(name: str) -> None:
    assert check_name("name", name) == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_check_name_refuses_naming_the_field(name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_name("vm_name", name)
    assert caught.value.field == "vm_name"
    assert caught.value.details["field"] == "vm_name"
    assert "letters, digits and hyphens" in caught.value.message


@pytest.mark.parametrize("value", [None, 5, b"web"])
def test_check_name_refuses_non_strings(value: object) -> None:
    with pytest.raises(InvalidInput):
        check_name("name", value)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", [*VALID_NAMES, "Standard_B1s", "my_size-2"])
def test_check_size_name_accepts(name: str) -> None:
    assert check_size_name("size", name) == name


@pytest.mark.parametrize("name", [n for n in BAD_NAMES if n != "a_b"])
def test_check_size_name_refuses_naming_the_field(name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_size_name("size", name)
    assert caught.value.field == "size"
    assert caught.value.details["field"] == "size"


# --- sizes ---------------------------------------------------------------------------------


def test_check_shape_accepts_the_limits() -> None:
    check_shape(1, MIN_MEMORY_MIB, MIN_DISK_BYTES)
    check_shape(MAX_VCPUS, MAX_MEMORY_MIB, 10 * TIB)


@pytest.mark.parametrize(
    ("vcpus", "memory_mib", "disk_bytes", "field"),
    [
        (0, 512, GIB, "vcpus"),
        (-1, 512, GIB, "vcpus"),
        (MAX_VCPUS + 1, 512, GIB, "vcpus"),
        (1, MIN_MEMORY_MIB - 1, GIB, "memory"),
        (1, 0, GIB, "memory"),
        (1, MAX_MEMORY_MIB + 1, GIB, "memory"),
        (1, 512, MIN_DISK_BYTES - 1, "disk"),
        (1, 512, 0, "disk"),
    ],
)
def test_check_shape_refuses_naming_the_field(vcpus: int, memory_mib: int, disk_bytes: int, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_shape(vcpus, memory_mib, disk_bytes)
    assert caught.value.field == field


# Azure's published shapes: (vCPUs, memory GiB).
AZURE = {
    "Standard_B1ls": (1, 0.5),
    "Standard_B1s": (1, 1),
    "Standard_B1ms": (1, 2),
    "Standard_B2s": (2, 4),
    "Standard_B2ms": (2, 8),
    "Standard_B4ms": (4, 16),
    "Standard_D2s_v5": (2, 8),
    "Standard_D4s_v5": (4, 16),
    "Standard_D8s_v5": (8, 32),
    "Standard_E2s_v5": (2, 16),
    "Standard_E4s_v5": (4, 32),
    "Standard_F2s_v2": (2, 4),
    "Standard_F4s_v2": (4, 8),
}
REQUIRED = [
    "Standard_B1ls",
    "Standard_B1s",
    "Standard_B1ms",
    "Standard_B2s",
    "Standard_B2ms",
    "Standard_D2s_v5",
    "Standard_D4s_v5",
    "Standard_E2s_v5",
    "Standard_F2s_v2",
]


def test_builtin_sizes_include_the_common_azure_sizes() -> None:
    names = [size.name for size in BUILTIN_SIZES]
    assert len(names) == len(set(names)), "duplicate builtin size names"
    assert set(REQUIRED) <= set(names)


@pytest.mark.parametrize("size", BUILTIN_SIZES, ids=lambda s: s.name)
def test_builtin_size_matches_azure_and_is_a_valid_shape(size) -> None:  # noqa: ANN001
    assert size.builtin
    check_size_name("size", size.name)
    check_shape(size.vcpus, size.memory_mib, size.disk_bytes)
    if size.name in AZURE:
        vcpus, memory_gib = AZURE[size.name]
        assert (size.vcpus, size.memory_mib) == (vcpus, int(memory_gib * 1024))


def test_size_describe_is_human() -> None:
    b2s = next(s for s in BUILTIN_SIZES if s.name == "Standard_B2s")
    assert b2s.describe() == "2 vCPU, 4G memory, 8G disk"


# --- VM power-state rules ------------------------------------------------------------------

# The rules as the design states them, written out independently of ALLOWED_FROM.
S = PowerState
EXPECTED_ALLOWED = {
    "start": {S.STOPPED, S.DEALLOCATED},
    "stop": {S.RUNNING, S.STARTING},
    "restart": {S.RUNNING, S.STARTING},
    "deallocate": {S.RUNNING, S.STARTING, S.STOPPED},
    "resize-disk": {S.RUNNING, S.STOPPED, S.DEALLOCATED},
}


def test_the_actions_with_state_rules() -> None:
    assert set(ALLOWED_FROM) == set(EXPECTED_ALLOWED)


@pytest.mark.parametrize("power", list(PowerState), ids=lambda p: p.value)
@pytest.mark.parametrize("action", sorted(EXPECTED_ALLOWED))
def test_check_action(action: str, power: PowerState) -> None:
    if power in EXPECTED_ALLOWED[action]:
        check_action("web1", action, power)
        return
    with pytest.raises(InvalidState) as caught:
        check_action("web1", action, power)
    err = caught.value
    assert err.status == 409
    assert f"cannot {action} VM 'web1' while it is {power.value}" in err.message
    for allowed in EXPECTED_ALLOWED[action]:
        assert allowed.value in err.message
    assert err.details == {"power_state": power.value, "action": action}


# --- errors --------------------------------------------------------------------------------

EXPECTED_ERRORS = {
    "FlexvmError": (500, "InternalError", None),
    "InvalidInput": (400, "InvalidInput", "FlexvmError"),
    "TooLarge": (413, "RequestBodyTooLarge", "InvalidInput"),
    "NotFound": (404, "NotFound", "FlexvmError"),
    "Conflict": (409, "Conflict", "FlexvmError"),
    "AlreadyExists": (409, "AlreadyExists", "Conflict"),
    "Busy": (409, "OperationInProgress", "Conflict"),
    "InvalidState": (409, "InvalidState", "Conflict"),
    "CapacityError": (409, "InsufficientCapacity", "FlexvmError"),
    "Unauthorized": (401, "Unauthorized", "FlexvmError"),
    "ImageError": (422, "InvalidImage", "FlexvmError"),
    "HypervisorError": (502, "HypervisorError", "FlexvmError"),
    "HypervisorUnavailable": (503, "HypervisorUnavailable", "HypervisorError"),
    "FenceFailed": (502, "FenceFailed", "FlexvmError"),
    "LoadBalancerError": (502, "LoadBalancerError", "FlexvmError"),
    "LabCommandError": (500, "LabCommandFailed", "FlexvmError"),
    "OperationFailed": (500, "OperationFailed", "FlexvmError"),
    "OperationTimeout": (504, "OperationTimeout", "OperationFailed"),
    "OperationCanceled": (409, "Canceled", "OperationFailed"),
    "WorkflowDiverged": (500, "WorkflowDiverged", "OperationFailed"),
    "InvalidTransition": (409, "InvalidTransition", "InvalidState"),
    "LeaseLost": (409, "LeaseLost", "Conflict"),
    "QuotaExceeded": (409, "QuotaExceeded", "Conflict"),
    "Forbidden": (403, "AuthorizationFailed", "FlexvmError"),
    "DatabaseUnavailable": (503, "DatabaseUnavailable", "FlexvmError"),
    "SchemaTooNew": (500, "SchemaTooNew", "FlexvmError"),
    "ServerUnavailable": (503, "ServerUnavailable", "FlexvmError"),
    "ProgramMissing": (503, "ProgramMissing", "FlexvmError"),
}


def error_classes() -> dict[str, type[FlexvmError]]:
    return {
        name: cls
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, FlexvmError) and cls.__module__ == errors.__name__
    }


def test_the_error_tree_is_complete_and_shaped_as_drawn() -> None:
    classes = error_classes()
    assert set(classes) == set(EXPECTED_ERRORS)
    for name, (status, code, parent) in EXPECTED_ERRORS.items():
        cls = classes[name]
        assert (cls.status, cls.code) == (status, code), name
        if parent is not None:
            assert cls.__bases__ == (classes[parent],), name


def test_the_docstring_draws_every_class_with_its_status() -> None:
    drawing = errors.__doc__ or ""
    for name, (status, _code, _parent) in EXPECTED_ERRORS.items():
        assert re.search(rf"\b{name} \({status}\)", drawing), name


def test_every_error_class_of_flexvm_is_defined_in_errors_py() -> None:
    """Importing every module finds any FlexvmError subclass made elsewhere (it would escape the tree)."""
    for module in pkgutil.walk_packages(flexvm.__path__, "flexvm."):
        importlib.import_module(module.name)
    ours = {f"{cls.__module__}.{cls.__qualname__}" for cls in _subclasses(FlexvmError)}
    outside = {name for name in ours if name.startswith("flexvm.") and not name.startswith("flexvm.errors.")}
    assert not outside


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def test_errors_that_moved_into_the_tree_still_import_from_where_they_were() -> None:
    from flexvm.lab.system import LabCommandError
    from flexvm.scaling.haproxy import LoadBalancerError

    assert LabCommandError is errors.LabCommandError
    assert LoadBalancerError is errors.LoadBalancerError


def test_codes_are_unique() -> None:
    codes = [code for _status, code, _parent in EXPECTED_ERRORS.values()]
    assert len(codes) == len(set(codes))


def test_to_dict_is_azures_shape() -> None:
    err = FlexvmError("it broke", details={"host": "h1"})
    assert err.to_dict() == {"code": "InternalError", "message": "it broke", "details": {"host": "h1"}}
    assert str(err) == "it broke"
    assert FlexvmError("plain").to_dict()["details"] == {}


def test_invalid_input_names_the_field() -> None:
    err = InvalidInput("memory", "must be at least 64M", details={"min": 64})
    assert err.to_dict() == {
        "code": "InvalidInput",
        "message": "memory: must be at least 64M",
        "details": {"field": "memory", "min": 64},
    }


def test_not_found_already_exists_and_busy_details() -> None:
    assert errors.NotFound("VM", "web1").to_dict() == {
        "code": "NotFound",
        "message": "VM 'web1' not found",
        "details": {"kind": "VM", "name": "web1"},
    }
    assert errors.AlreadyExists("image", "tiny").details == {"kind": "image", "name": "tiny"}
    busy = errors.Busy("VM", "web1", "op-123")
    assert "op-123" in busy.message
    assert busy.details == {"kind": "VM", "name": "web1", "operation_id": "op-123"}


@pytest.mark.parametrize("name", sorted(EXPECTED_ERRORS))
def test_every_error_has_its_own_status_on_instances(name: str) -> None:
    cls = error_classes()[name]
    status, code, _parent = EXPECTED_ERRORS[name]
    if cls is InvalidInput:
        err: FlexvmError = cls("f", "m")
    elif cls in (errors.NotFound, errors.AlreadyExists, errors.SchemaTooNew):
        err = cls("thing", "x")
    elif cls is errors.Busy:
        err = cls("thing", "x", "op")
    elif cls is errors.ProgramMissing:
        err = cls({"dnsmasq": "dnsmasq-base"})
    elif cls is errors.QuotaExceeded:
        err = cls("team-a", "vcpus", 2, 3, 4, "vCPUs")
    elif cls is errors.TooLarge:
        err = cls("body", 2048, 1024)
    else:
        err = cls("message")
    assert (err.status, err.to_dict()["code"]) == (status, code)
    assert set(err.to_dict()) == {"code", "message", "details"}
