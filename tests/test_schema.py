"""The schema layer: loading, support checks, canonical serialization, format prompt, row validation."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlx.schema import (
    SchemaError,
    canonical_json,
    check_supported,
    format_prompt,
    grammar_schema,
    load_schema,
    parse,
    undecodable,
    validate_rows,
)

POI_FILE = Path(__file__).resolve().parents[1] / "templates" / "poi.py"
StreetScene = load_schema(POI_FILE)
POI = load_schema(POI_FILE, "POI")
Address = load_schema(POI_FILE, "Address")
OpeningHours = load_schema(POI_FILE, "OpeningHours")

# Printable text the decoder can emit: anything but surrogates and control characters, plus the
# characters JSON must escape.
TEXT = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")) | st.sampled_from('"\\\n\t/')
HHMM = st.from_regex(r"([01][0-9]|2[0-3]):[0-5][0-9]", fullmatch=True)


def _text(lo, hi):
    return st.text(TEXT, min_size=lo, max_size=hi)


opening_hours = st.builds(
    OpeningHours, first_day=st.sampled_from(list(OpeningHours.model_fields["first_day"].annotation)),
    last_day=st.sampled_from(list(OpeningHours.model_fields["last_day"].annotation)), opens=HHMM, closes=HHMM)
addresses = st.builds(Address, house_number=st.none() | st.from_regex(r"[0-9]{1,4}[a-z]?", fullmatch=True),
                      street=st.none() | _text(1, 40))
pois = st.builds(
    POI, name=_text(1, 40), category=st.sampled_from(list(POI.model_fields["category"].annotation)),
    address=addresses,
    phone=st.none() | st.from_regex(r"\+?[0-9][0-9 ]{5,16}[0-9]", fullmatch=True),
    website=st.none() | st.from_regex(r"[a-z0-9-]{1,30}\.[a-z]{2,4}", fullmatch=True),
    opening_hours=st.lists(opening_hours, max_size=3), open_24h=st.booleans())
scenes = st.builds(StreetScene, pois=st.lists(pois, max_size=3))


def _write(tmp_path, source: str) -> Path:
    path = tmp_path / "schema.py"
    path.write_text(textwrap.dedent(source))
    return path


# ---- loading -----------------------------------------------------------------------------------

def test_load_schema_picks_the_root_model():
    assert StreetScene.__name__ == "StreetScene"
    assert POI.__name__ == "POI"


def test_load_schema_ambiguous_roots_names_candidates(tmp_path):
    path = _write(tmp_path, """
        from pydantic import BaseModel
        class A(BaseModel):
            x: bool
        class B(BaseModel):
            y: bool
    """)
    with pytest.raises(SchemaError, match=r"candidates: A, B.*class_name="):
        load_schema(path)
    assert load_schema(path, "B").__name__ == "B"
    with pytest.raises(SchemaError, match="no model named 'C'"):
        load_schema(path, "C")


def test_load_schema_bad_files(tmp_path):
    with pytest.raises(SchemaError, match="does not exist"):
        load_schema(tmp_path / "missing.py")
    with pytest.raises(SchemaError, match="no pydantic BaseModel"):
        load_schema(_write(tmp_path, "x = 1\n"))
    with pytest.raises(SchemaError, match="cannot import.*ZeroDivisionError"):
        load_schema(_write(tmp_path, "1 / 0\n"))


# ---- support checks ----------------------------------------------------------------------------

@pytest.mark.parametrize("field, message", [
    ("tags: dict[str, Any]", r"field 'tags': an object with arbitrary keys"),
    ("anything: Any", r"field 'anything': the type is unconstrained"),
    ("note: str", r"field 'note': the string has no maximum length.*max_length=N"),
    ("items: list[Inner] = Field(max_length=2)", r"field 'items\[\]\.text': the string has no maximum"),
    ("names: list[str]", r"field 'names': the list has no maximum length.*max_length=N"),
    ("count: int = Field(ge=0)", r"field 'count': the int has no upper bound.*le="),
    ("score: float = Field(ge=0, le=0.5)", r"field 'score': float bounds must be whole numbers"),
    ("code: str = Field(pattern=r'[A-Z]{3}')", r"field 'code': pattern .* must be anchored"),
    ("code: str = Field(pattern=r'^[A-Z]+$')", r"field 'code': pattern .* no maximum length"),
    ("tags: set[bool]", r"field 'tags': sets"),
    ("pair: tuple[bool, bool]", r"field 'pair': tuples"),
])
def test_unsupported_fields_are_named_with_the_fix(tmp_path, field, message):
    path = _write(tmp_path, f"""
        from typing import Any
        from pydantic import BaseModel, Field
        class Inner(BaseModel):
            text: str
        class Root(BaseModel):
            ok: bool
            {field}
    """)
    with pytest.raises(SchemaError, match=message):
        check_supported(load_schema(path, "Root"))


def test_recursion_is_rejected(tmp_path):
    path = _write(tmp_path, """
        from pydantic import BaseModel, Field
        class Node(BaseModel):
            label: bool
            children: list["Node"] = Field(max_length=2)
    """)
    with pytest.raises(SchemaError, match=r"field 'children\[\]': Node contains itself \(unbounded recursion\)"):
        check_supported(load_schema(path))


def test_every_problem_is_listed_at_once(tmp_path):
    path = _write(tmp_path, """
        from pydantic import BaseModel
        class Root(BaseModel):
            a: str
            b: list[int]
    """)
    with pytest.raises(SchemaError) as e:
        check_supported(load_schema(path))
    assert "field 'a'" in str(e.value) and "field 'b'" in str(e.value) and "field 'b[]'" in str(e.value)


def test_poi_template_is_supported():
    check_supported(StreetScene)


# ---- canonical serialization -------------------------------------------------------------------

def test_canonical_json_is_compact_ordered_and_explicit():
    scene = StreetScene(pois=[POI(name="Café \"Nord\"", category="cafe", address=Address(street="Rue Émile"))])
    text = canonical_json(scene)
    assert text == (
        '{"pois":[{"name":"Café \\"Nord\\"","category":"cafe","address":{"house_number":null,'
        '"street":"Rue Émile"},"phone":null,"website":null,"opening_hours":[],"open_24h":false}]}'
    )
    assert parse(text, StreetScene) == scene


def test_parse_rejects_extra_keys_and_invalid_values():
    good = json.loads(canonical_json(StreetScene(pois=[])))
    with pytest.raises(ValueError, match="Extra inputs"):
        parse(json.dumps({**good, "city": "x"}), StreetScene)
    with pytest.raises(ValueError, match="pois"):
        parse('{"pois":"none"}', StreetScene)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenes)
def test_canonical_text_parses_back_to_an_equal_object(scene):
    text = canonical_json(scene)
    assert parse(text, StreetScene) == scene
    assert canonical_json(parse(text, StreetScene)) == text
    assert undecodable(scene) == []


def test_floats_and_negative_zero_have_one_text(tmp_path):
    path = _write(tmp_path, """
        from pydantic import BaseModel, Field
        class M(BaseModel):
            x: float = Field(ge=-1, le=1)
    """)
    M = load_schema(path)
    assert canonical_json(M(x=-0.0)) == canonical_json(M(x=0.0)) == '{"x":0.0}'
    assert canonical_json(M(x=1)) == '{"x":1.0}'


def test_grammar_schema_requires_everything_and_forbids_extras():
    schema = grammar_schema(StreetScene)

    def objects(node):
        if isinstance(node, dict):
            if node.get("type") == "object":
                yield node
            for value in node.values():
                yield from objects(value)
        elif isinstance(node, list):
            for value in node:
                yield from objects(value)

    found = list(objects(schema))
    assert len(found) == 4  # StreetScene, POI, Address, OpeningHours
    for obj in found:
        assert obj["additionalProperties"] is False
        assert obj["required"] == list(obj["properties"])
    assert "$ref" not in json.dumps(schema)


def test_undecodable_control_characters_are_named():
    scene = StreetScene(pois=[POI(name="bad\x01name", category="bar", address=Address())])
    [(path, reason)] = undecodable(scene)
    assert path == "pois[0].name" and "U+0001" in reason


# ---- format prompt -----------------------------------------------------------------------------

def test_format_prompt_describes_task_fields_and_enums():
    text = format_prompt(StreetScene)
    assert text.startswith("Every storefront visible in the image")
    assert "cafe|restaurant|bakery" in text and "mon|tue|wed" in text
    assert "name: text (max 40; as written on the sign)" in text
    assert "house_number: text like [0-9]{1,4}[a-z]? or null" in text and "phone: text or null" in text
    assert "list of up to 3" in text and "Use null" in text
    assert format_prompt(StreetScene, task="Read the shop signs.").splitlines()[0] == "Read the shop signs."


# ---- row validation ----------------------------------------------------------------------------

def test_validate_rows_lists_every_problem(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")  # validation decodes every image
    good = {"pois": [{"name": "Nord", "category": "cafe", "address": {"house_number": "12", "street": None}}]}
    bad_enum = {"pois": [{"name": "Nord", "category": "pub", "address": {}}]}
    missing = {"pois": [{"category": "cafe", "address": {}}]}
    extra = {"pois": [], "city": "Lyon"}
    lines = [
        json.dumps({"image": "ok.png", "target": good}),
        json.dumps({"image": "ok.png", "target": bad_enum}),
        json.dumps({"image": "ok.png", "target": missing}),
        json.dumps({"image": "ok.png", "target": extra}),
        "{not json",
        json.dumps({"image": "missing.png", "target": good, "prompt": "Read the signs."}),
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(lines) + "\n")
    report = validate_rows(data, StreetScene)
    got = {(e.row, e.field) for e in report.errors}
    assert got == {(2, "target.pois[0].category"), (3, "target.pois[0].name"), (4, "target.city"),
                   (5, "line"), (6, "image")}
    assert [r.row for r in report.rows] == [1]
    assert report.rows[0].text == canonical_json(report.rows[0].target)
    assert set(report.bad_lines) == {2, 3, 4, 5, 6}
    text = report.format()
    assert f"{data}: 5 invalid row(s) of 6" in text
    assert "row 4: target.city: Extra inputs are not permitted" in text
    assert all(str(data) in str(e) for e in report.errors)
