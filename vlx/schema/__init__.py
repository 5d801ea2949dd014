"""Schemas: load a pydantic schema file, check it can be decoded, serialize it canonically,
describe it in a format prompt and validate training rows against it."""

from vlx.schema.canonical import canonical_json, grammar_schema, parse, undecodable
from vlx.schema.load import SchemaError, check_supported, json_schema, load_schema
from vlx.schema.prompt import format_prompt
from vlx.schema.rows import Row, RowError, RowReport, validate_rows

__all__ = ["canonical_json", "grammar_schema", "parse", "undecodable", "SchemaError", "check_supported",
           "json_schema", "load_schema", "format_prompt", "Row", "RowError", "RowReport", "validate_rows"]
