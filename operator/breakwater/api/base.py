"""The model bases: `ApiModel` for the Kubernetes resource, `WireModel` for what our processes exchange.

Both speak camelCase on the wire (Python attributes are snake_case). They are two because they answer
to different readers: `ApiModel` objects (`SpecModel` strict and frozen, `StatusModel` lenient) are what
users write and read through the API server, so they drop ``null`` values before validating (as the
API server prunes them), keep their docstrings for the CRD and docs, and run the CEL rules of
`breakwater.api.rules`; `WireModel` objects (the sidecar config, bundles, reports, datagrams) travel
only between the operator and its sidecars, frozen, unknown fields refused (a subclass that must
accept a newer peer's fields says so).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from breakwater.api.rule import Rule

__all__ = ["ApiModel", "SpecModel", "StatusModel", "WireModel", "section"]


class ApiModel(BaseModel):
    """Common behaviour of every API object."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        use_attribute_docstrings=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {key: value for key, value in data.items() if value is not None}
        return data

    def to_dict(self) -> dict[str, Any]:
        """The wire form: camelCase keys, JSON types, ``None`` fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class SpecModel(ApiModel):
    """A user-written object: strict types (no "8080" for 8080), unknown fields rejected, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    __cel_rules__: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in type(self).__cel_rules__:
            if not rule.check(self):
                raise rule.violation()
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        if cls.__cel_rules__:
            target = handler.resolve_ref_schema(json_schema)
            target["x-kubernetes-validations"] = [rule.to_schema() for rule in cls.__cel_rules__]
        return json_schema


class StatusModel(ApiModel):
    """An operator-written object: typed, but lenient (unknown fields kept, lax types)."""

    model_config = ConfigDict(extra="allow")


class WireModel(BaseModel):
    """A machine format between the operator and the sidecars: camelCase, frozen, strict about fields."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, validate_default=True
    )


def section(factory: Any) -> Any:
    """A section that is always there; the CRD's default is the whole default object.

    (The API server checks a default against the CEL rules as written, without filling in the
    defaults nested in it, so ``default: {}`` would not do.)
    """
    return Field(default_factory=factory, json_schema_extra=lambda schema: _full_default(schema, factory))


def _full_default(schema: dict[str, Any], factory: Any) -> None:
    schema["default"] = factory().to_dict()
