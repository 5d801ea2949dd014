"""Field metrics for schema extraction, on the POI schema and a small generic one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel

from vlx.eval.extraction import evaluate_predictions
from vlx.eval.fields import cer, edit_distance, field_metrics, format_table, normalize_text, schema_paths
from vlx.schema import load_schema

POI_FILE = Path(__file__).resolve().parents[1] / "templates" / "poi.py"


@pytest.fixture(scope="module")
def StreetScene():
    return load_schema(POI_FILE)


def _poi(name, category, house=None, street=None, hours=(), open_24h=False):
    return {"name": name, "category": category, "address": {"house_number": house, "street": street},
            "phone": None, "website": None,
            "opening_hours": [{"first_day": a, "last_day": b, "opens": o, "closes": c} for a, b, o, c in hours],
            "open_24h": open_24h}


WEEKDAYS = ("mon", "fri", "08:00", "18:00")
SATURDAY = ("sat", "sat", "09:00", "14:00")


def _scenes(StreetScene):
    gold = [
        StreetScene.model_validate({"pois": [_poi("Cafe Luna", "cafe", "12", "Main St", [WEEKDAYS, SATURDAY])]}),
        StreetScene.model_validate({"pois": [_poi("Bäckerei Ost", "bakery", "3a"), _poi("City Bank", "bank")]}),
        StreetScene.model_validate({"pois": []}),
    ]
    predictions = [
        # name right up to case and spacing, street wrong, one of two opening-hours lines
        {"pois": [_poi("cafe  luna ", "cafe", "12", "Main Street", [WEEKDAYS])]},
        # the second storefront is missed
        json.dumps({"pois": [_poi("Bäckerei Ost", "bakery", "3a")]}),
        # not schema-valid: an unknown key
        {"pois": [], "note": "nothing here"},
    ]
    return predictions, gold


def test_poi_schema_paths(StreetScene):
    assert schema_paths(StreetScene) == {
        "pois": "aligned", "pois[].name": "text", "pois[].category": "exact",
        "pois[].address.house_number": "text", "pois[].address.street": "text", "pois[].phone": "text",
        "pois[].website": "text", "pois[].opening_hours": "set", "pois[].open_24h": "exact",
    }


def test_perfect_predictions_score_one(StreetScene):
    _, gold = _scenes(StreetScene)
    report = field_metrics(gold, gold)
    assert report["schema_valid_rate"] == 1.0
    for path, f in report["fields"].items():
        assert f.get("accuracy", f.get("count_accuracy")) == 1.0, path
        assert f.get("cer", 0.0) == 0.0 and f.get("f1", 1.0) == 1.0


def test_poi_field_metrics_by_hand(StreetScene):
    predictions, gold = _scenes(StreetScene)
    report = field_metrics(predictions, gold, StreetScene)
    f = report["fields"]
    assert report["n"] == 3 and report["schema_valid_rate"] == pytest.approx(2 / 3)
    # Number of POIs right in scene 0 only (scene 1 misses one, scene 2's prediction is invalid).
    assert f["pois"]["count_accuracy"] == pytest.approx(1 / 3)
    # Three aligned POI slots: the missed "City Bank" is an error on every field.
    assert f["pois[].name"]["n"] == 3 and f["pois[].name"]["accuracy"] == pytest.approx(2 / 3)
    # CER: "cafe  luna" vs "Cafe Luna" = 3 edits (c/C, l/L, a space) / 9; exact = 0; missing = 9 / 9.
    assert f["pois[].name"]["cer"] == pytest.approx((3 / 9 + 0 + 1) / 3)
    assert f["pois[].category"]["accuracy"] == pytest.approx(2 / 3)
    assert f["pois[].address.street"]["accuracy"] == pytest.approx(1 / 3)  # wrong, None==None, missing
    assert f["pois[].address.street"]["cer"] == pytest.approx((4 / 7 + 0 + 0) / 3)
    hours = f["pois[].opening_hours"]
    assert (hours["precision"], hours["recall"]) == (1.0, 0.5) and hours["f1"] == pytest.approx(2 / 3)
    assert hours["accuracy"] == pytest.approx(1 / 3)  # only the empty set of the bakery is exactly right
    # Majority-class baselines from the gold data.
    assert f["pois[].open_24h"]["baseline"]["accuracy"] == 1.0  # always False
    assert f["pois[].category"]["baseline"]["accuracy"] == pytest.approx(1 / 3)
    assert f["pois[].opening_hours"]["baseline"]["accuracy"] == pytest.approx(2 / 3)  # the empty set


def test_generic_nested_schema():
    class Inner(BaseModel):
        code: int
        label: str | None = None

    class Outer(BaseModel):
        kind: Literal["a", "b"]
        inner: Inner
        tags: list[str]

    assert schema_paths(Outer) == {"kind": "exact", "inner.code": "exact", "inner.label": "text", "tags": "set"}
    gold = [Outer(kind="a", inner=Inner(code=1, label="X"), tags=["p", "q"]),
            Outer(kind="a", inner=Inner(code=2), tags=[]),
            Outer(kind="b", inner=Inner(code=3, label="x"), tags=["p"])]
    preds = [{"kind": "a", "inner": {"code": 1, "label": "x"}, "tags": ["q", "p"]},
             {"kind": "b", "inner": {"code": 2, "label": None}, "tags": ["p"]},
             None]
    f = field_metrics(preds, gold)["fields"]
    assert f["kind"]["accuracy"] == pytest.approx(1 / 3) and f["kind"]["baseline"]["value"] == "a"
    assert f["kind"]["baseline"]["accuracy"] == pytest.approx(2 / 3)
    assert f["inner.code"]["accuracy"] == pytest.approx(2 / 3)
    assert f["inner.label"]["accuracy"] == pytest.approx(2 / 3)  # "x" ~ "X", None == None, missing
    # Majority label: "x" (normalised "X"/"x" twice) -> 2 of 3.
    assert f["inner.label"]["baseline"]["accuracy"] == pytest.approx(2 / 3)
    assert f["tags"]["precision"] == pytest.approx(2 / 3) and f["tags"]["recall"] == pytest.approx(2 / 3)


def test_text_helpers():
    assert normalize_text("  Cafe\tLUNA  ") == "cafe luna"
    assert edit_distance("kitten", "sitting") == 3
    assert cer("Main Street", "Main St") == pytest.approx(4 / 7)
    assert cer(None, None) == 0.0 and cer("x", "") == 1.0


def test_errors_and_table(StreetScene):
    predictions, gold = _scenes(StreetScene)
    with pytest.raises(ValueError, match="3 predictions but 2"):
        field_metrics(predictions, gold[:2])
    with pytest.raises(ValueError, match="not a valid StreetScene"):
        field_metrics([None], [{"pois": "nope"}], StreetScene)
    table = format_table(field_metrics(predictions, gold))
    assert "| pois[].open_24h | accuracy | 0.667 | 1.000 | 3 |" in table
    assert "Schema-valid: 66.7% of 3" in table


def test_evaluate_predictions_writes_metrics(StreetScene, tmp_path):
    from vlx.schema import Row

    predictions, gold = _scenes(StreetScene)
    rows = [Row(row=i + 1, image=Path(f"img{i}.png"), target=g) for i, g in enumerate(gold)]
    report = evaluate_predictions(predictions, rows, StreetScene, out_dir=tmp_path / "out", seconds=2.0)
    assert report["images_per_second"] == 1.5
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["fields"]["pois[].name"]["accuracy"] == pytest.approx(2 / 3)
    assert "Majority baseline" in (tmp_path / "out" / "report.md").read_text()
    assert len((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()) == 3
