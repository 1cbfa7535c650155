"""Names in paths, queries and bodies, as the OpenAPI document declares them.

The routes check names themselves (``check_name``, ``check_size_name``, ``check_project``: one rule
each, whose 400 names the field and the rule); these types only write the same rule into the
document, so that a client, or a fuzzer generating requests from it, sends names the routes take.
The patterns are the checks' own regular expressions, so the two cannot drift apart.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Path
from pydantic import Field

from flexvm.model.names import _NAME, _SIZE_NAME, NAME_RULE
from flexvm.model.projects import _PROJECT, PROJECT_RULE


def declared(regex: re.Pattern[str], max_length: int) -> dict[str, Any]:
    """The JSON Schema of a string that ``regex.fullmatch`` takes."""
    return {"pattern": f"^(?:{regex.pattern})$", "maxLength": max_length}


NAME_SCHEMA = declared(_NAME, 64)
SIZE_NAME_SCHEMA = declared(_SIZE_NAME, 64)
PROJECT_SCHEMA = declared(_PROJECT, 24)
OPERATION_ID_PATTERN = "^[0-9a-f-]{1,36}$"  # what routes/operations.py checks
OPERATION_ID_SCHEMA: dict[str, Any] = {"pattern": OPERATION_ID_PATTERN, "maxLength": 36}

# Path parameters.
Name = Annotated[str, Path(description=NAME_RULE, json_schema_extra=NAME_SCHEMA)]
SizeName = Annotated[
    str, Path(description="letters, digits, '_' and '-', 1-64 characters", json_schema_extra=SIZE_NAME_SCHEMA)
]
ProjectName = Annotated[str, Path(description=PROJECT_RULE, json_schema_extra=PROJECT_SCHEMA)]
OperationId = Annotated[str, Path(json_schema_extra=OPERATION_ID_SCHEMA)]

# Fields of request bodies.
NameField = Annotated[str, Field(description=NAME_RULE, json_schema_extra=NAME_SCHEMA)]
SizeNameField = Annotated[str, Field(json_schema_extra=SIZE_NAME_SCHEMA)]
