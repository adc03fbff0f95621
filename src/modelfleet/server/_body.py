"""Request bodies validated straight from their JSON bytes with ``model_validate_json``.

Every JSON body of the API is read this way. The wire schemas are strict (a
device profile is ``strict=True``): JSON arrays are valid tuples when pydantic
reads JSON, but not when it validates the Python lists ``json.loads`` makes,
which is what FastAPI does with a body parameter. Reading the bytes ourselves
keeps the schemas strict, parses in one pass in pydantic-core (cheaper on the
check-in path), and still answers a refusal as a 422 naming the field.
pydantic-core also refuses lone UTF-16 surrogates, which ``json.loads`` lets
through to the database; NUL escapes are refused here. The OpenAPI document
gets the schemas through :func:`add_body_schemas`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from modelfleet.server._errors import ApiError

__all__ = ["add_body_schemas", "json_body", "parse_json", "request_body"]

Model = TypeVar("Model", bound=BaseModel)
_REF = "#/components/schemas/{model}"
# A JSON \u0000 escape not itself escaped: PostgreSQL text and JSONB cannot hold NUL.
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def parse_json(model: type[Model], body: bytes) -> Model:
    """Validate JSON bytes as ``model``.

    Raises:
        RequestValidationError: the body does not fit; the error names the field.
        ApiError: the body holds a NUL escape.
    """
    if b"\\u0000" in body and _NUL_ESCAPE.search(body):  # the substring test is cheap; the regex is not
        raise ApiError(422, "invalid", "text must not contain NUL characters (\\u0000)")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def json_body(model: type[Model]) -> Callable[[Request], Awaitable[Model]]:
    """A dependency that parses the request body as ``model`` from its JSON bytes."""

    async def parse(request: Request) -> Model:
        return parse_json(model, await request.body())

    return parse


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """The ``openapi_extra`` that documents a JSON body of ``model``."""
    schema = {"$ref": _REF.format(model=model.__name__)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def add_body_schemas(app: FastAPI, models: Iterable[type[BaseModel]]) -> None:
    """Make ``app``'s OpenAPI document carry the validation schemas of ``models`` as components."""
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [(model, "validation") for model in models]

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
                description=app.description,
            )
            _, definitions = models_json_schema(pairs, ref_template=_REF)
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in definitions.get("$defs", {}).items():
                schemas.setdefault(name, schema)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
