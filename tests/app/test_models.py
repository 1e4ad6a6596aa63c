"""Model endpoints: listing, detail, versions, rollback and predictions."""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from threadpoolctl import threadpool_limits

from backend.app.deps import EstimatorCache
from backend.ml.data import loading
from backend.ml.fleet import specs
from backend.ml.fleet.specs import MODEL_NAMES
from backend.ml.training import trainer
from tests.app.conftest import CHECK, TRAINED, ClientFactory, app_settings, error, ok

ROLLBACK = "supplier_performance"  # trained twice: v0002 production, v0001 previous


@functools.lru_cache(maxsize=8)
def table(database_url: str, name: str) -> pd.DataFrame:
    return loading.load_table(loading.readonly_engine(database_url), name)


def records(database_url: str, name: str, n: int = 5) -> list[dict[str, Any]]:
    """`n` real rows of a model's features, as a client would send them in JSON."""
    spec = specs.get_spec(name)
    table_ = table(database_url, spec.table)
    frame = trainer.labelled_frame(spec, table_)[0].tail(n)[list(spec.features)]
    out = []
    for row in frame.to_dict("records"):
        out.append({k: (None if isinstance(v, float) and math.isnan(v)
                        else str(v) if k in spec.categorical
                        else float(v)) for k, v in row.items()})
    return out


def expected(database_url: str, name: str, rows: list[dict[str, Any]],
             client: TestClient, version: str | None = None) -> list[Any]:
    store = client.app.state.services.store  # type: ignore[attr-defined]
    estimator, _ = store.load(name, version)
    spec = specs.get_spec(name)
    frame = pd.DataFrame(rows)[list(spec.features)]
    for column in spec.numeric:
        frame[column] = frame[column].astype(float)
    with threadpool_limits(limits=1, user_api="openmp"):  # as the route does
        return list(trainer.decision_values(spec, estimator, frame).tolist())


def test_list_has_all_17_with_what_serves(shared_client: TestClient) -> None:
    models = ok(shared_client.get("/ml/models"))["models"]
    assert [m["name"] for m in models] == MODEL_NAMES
    by_name = {m["name"]: m for m in models}
    for name in MODEL_NAMES:
        row = by_name[name]
        assert row["group"] == specs.get_spec(name).group and 0 < row["threshold"] < 1
        if name in TRAINED:
            assert row["production_version"] and row["score"] is not None
            assert row["trained_at"] and row["passed"] is not None
        else:
            assert row["production_version"] is None and row["score"] is None
    assert by_name[ROLLBACK]["production_version"] == "v0002"
    assert by_name["decision_support"]["last_check"]["live_score"] == 0.71
    assert by_name["decision_support"]["last_check"]["check_id"] == CHECK["check_id"]
    assert by_name["anomaly_detection"]["last_check"] is None


def test_detail_has_production_meta_without_feature_stats(shared_client: TestClient) -> None:
    data_ = ok(shared_client.get("/ml/models/decision_support"))
    assert data_["aliases"] == {"production": "v0001", "previous": None}
    production = data_["production"]
    assert production["version"] == "v0001" and production["sha256"]
    assert "feature_stats" not in production
    assert data_["threshold"] == 0.62 and data_["metric"] == "accuracy"
    check = data_["last_check"]
    assert check["verdict"] == "healthy" and check["drift"]["max_psi"] == 0.31
    assert check["timestamp"] == CHECK["timestamp"]
    spec = specs.get_spec("decision_support")
    assert [f["name"] for f in data_["features"]] == list(spec.features)
    kinds = {f["name"]: f["kind"] for f in data_["features"]}
    assert kinds["yard"] == "categorical" and kinds["rakes_available"] == "numeric"


def test_detail_of_an_untrained_model(shared_client: TestClient) -> None:
    data_ = ok(shared_client.get("/ml/models/delay_prediction"))
    assert data_["production"] is None and data_["aliases"]["production"] is None
    assert data_["last_check"] is None


def test_versions_newest_first_with_states(shared_client: TestClient) -> None:
    data_ = ok(shared_client.get(f"/ml/models/{ROLLBACK}/versions"))
    assert [(v["version"], v["state"]) for v in data_["versions"]] == [
        ("v0002", "production"), ("v0001", "previous")]
    assert all("feature_stats" not in v for v in data_["versions"])
    assert data_["aliases"] == {"production": "v0002", "previous": "v0001"}


@pytest.mark.parametrize("method, path", [
    ("get", "/ml/models/nope"), ("get", "/ml/models/nope/versions"),
    ("post", "/ml/models/nope/rollback"), ("post", "/ml/models/nope/predict")])
def test_unknown_model_is_404_listing_valid_names(shared_client: TestClient, method: str,
                                                  path: str) -> None:
    kwargs: dict[str, Any] = {"json": {"records": [{}]}} if path.endswith("predict") else {}
    body = error(getattr(shared_client, method)(path, **kwargs), 404)
    assert "'nope'" in body["message"]
    assert all(name in body["message"] for name in MODEL_NAMES)


def test_rollback_to_previous_is_audited_as_api(make_client: ClientFactory) -> None:
    client = make_client()
    data_ = ok(client.post(f"/ml/models/{ROLLBACK}/rollback"))
    assert data_["aliases"] == {"production": "v0001", "previous": "v0002"}
    audit = data_["audit"]
    assert (audit["from"], audit["to"], audit["action"], audit["actor"]) == (
        "v0002", "v0001", "rollback", "api")
    store = client.app.state.services.store  # type: ignore[attr-defined]
    assert store.audit(1, name=ROLLBACK)[0]["actor"] == "api"
    predicted = ok(client.post(f"/ml/models/{ROLLBACK}/predict",
                               json={"records": records(app_settings(client).DATABASE_URL,
                                                        ROLLBACK, 2)}))
    assert predicted["version"] == "v0001"  # the cache follows the alias


def test_rollback_to_a_named_version_with_a_reason(make_client: ClientFactory) -> None:
    client = make_client()
    data_ = ok(client.post(f"/ml/models/{ROLLBACK}/rollback",
                           json={"version": "v0001", "reason": "bad week"}))
    assert data_["audit"]["reason"] == "bad week" and data_["aliases"]["production"] == "v0001"


def test_rollback_refusals(shared_client: TestClient) -> None:
    body = error(shared_client.post(f"/ml/models/{ROLLBACK}/rollback",
                                    json={"version": "v0009"}), 404)
    assert "v0009" in body["message"] and "v0001, v0002" in body["message"]
    body = error(shared_client.post("/ml/models/decision_support/rollback"), 409)
    assert "no previous version" in body["message"]
    body = error(shared_client.post(f"/ml/models/{ROLLBACK}/rollback",
                                    json={"version": "v0002"}), 409)
    assert "already production" in body["message"]
    error(shared_client.post("/ml/models/delay_prediction/rollback"), 409)
    body = error(shared_client.post(f"/ml/models/{ROLLBACK}/rollback",
                                    json={"version": "latest"}), 422)
    assert body["message"].startswith("body.version")
    body = error(shared_client.post(f"/ml/models/{ROLLBACK}/rollback",
                                    json={"versoin": "v0001"}), 422)
    assert "body.versoin: is not a known field" in body["message"]


@pytest.mark.parametrize("name, output", [
    ("decision_support", "label"), ("predictive_maintenance", "label"),
    ("scenario_analysis", "value"), ("anomaly_detection", "anomaly_score")])
def test_predict_matches_the_stored_model(shared_client: TestClient, small_db: str,
                                          name: str, output: str) -> None:
    rows = records(small_db, name, 7)
    data_ = ok(shared_client.post(f"/ml/models/{name}/predict", json={"records": rows}))
    assert data_["output"] == output and data_["count"] == 7
    assert data_["version"] == "v0001" and data_["served_as"] == "production"
    want = expected(small_db, name, rows, shared_client)
    if output == "label":
        assert data_["predictions"] == want
    else:
        assert np.allclose(data_["predictions"], want)


def test_predict_with_a_version_and_nulls_and_extra_fields(shared_client: TestClient,
                                                           small_db: str) -> None:
    rows = records(small_db, ROLLBACK, 3)
    rows[0]["on_time_rate"] = None
    rows[1]["a_column_the_model_ignores"] = "x"
    data_ = ok(shared_client.post(f"/ml/models/{ROLLBACK}/predict",
                                  json={"records": rows, "version": "v0001"}))
    assert data_["version"] == "v0001" and data_["served_as"] == "requested"
    assert data_["count"] == 3


def test_loaded_estimators_are_cached_per_version(make_client: ClientFactory,
                                                  small_db: str) -> None:
    client = make_client()
    cache: EstimatorCache = client.app.state.estimators  # type: ignore[attr-defined]
    body = {"records": records(small_db, "decision_support", 2)}
    ok(client.post("/ml/models/decision_support/predict", json=body))
    first = cache.get("decision_support", "v0001")
    assert first is not None
    ok(client.post("/ml/models/decision_support/predict", json=body))
    assert cache.get("decision_support", "v0001") is first


def test_predict_without_production_is_409(shared_client: TestClient, small_db: str) -> None:
    body = error(shared_client.post("/ml/models/delay_prediction/predict", json={
        "records": [dict.fromkeys(specs.get_spec("delay_prediction").features)]}), 409)
    assert "no production version" in body["message"]


def test_predict_unknown_version_is_404(shared_client: TestClient, small_db: str) -> None:
    body = error(shared_client.post("/ml/models/decision_support/predict", json={
        "records": records(small_db, "decision_support", 1), "version": "v0042"}), 404)
    assert "v0042" in body["message"]


def test_predict_names_the_record_and_field_at_fault(shared_client: TestClient,
                                                    small_db: str) -> None:
    rows = records(small_db, "decision_support", 4)
    del rows[1]["yard"]
    rows[2]["yard"] = 3
    rows[3]["rakes_available"] = "many"
    rows[0]["stock_level_pct"] = True
    body = error(shared_client.post("/ml/models/decision_support/predict",
                                    json={"records": rows}), 422)
    fields = {d["field"]: d["message"] for d in body["details"]}
    assert fields == {
        "body.records[0].stock_level_pct": "must be a number or null, not a boolean",
        "body.records[1].yard": "is missing",
        "body.records[2].yard": "must be a string (categorical) or null, not a number",
        "body.records[3].rakes_available": "must be a number or null, not a string"}
    assert "body.records[1].yard: is missing" in body["message"]


@pytest.mark.parametrize("body, field", [
    ({"records": []}, "body.records"), ({}, "body.records"), ({"records": {}}, "body.records"),
    ({"records": [1]}, "body.records[0]"), ({"records": [{}], "version": "v1"}, "body.version"),
    ({"records": [{}], "model": "x"}, "body.model"), ([], "body")])
def test_predict_body_shape_errors(shared_client: TestClient, body: Any, field: str) -> None:
    found = error(shared_client.post("/ml/models/decision_support/predict", json=body), 422)
    assert found["details"][0]["field"] == field, found


def test_predict_too_many_records_is_422(shared_client: TestClient) -> None:
    body = error(shared_client.post("/ml/models/decision_support/predict",
                                    json={"records": [{}] * 10_001}), 422)
    assert body["message"].startswith("body.records") and "10000" in body["message"]


def test_predict_malformed_json_is_422(shared_client: TestClient) -> None:
    body = error(shared_client.post("/ml/models/decision_support/predict",
                                    content=b'{"records": [', headers={
                                        "content-type": "application/json"}), 422)
    assert body["message"].startswith("body: the request body is not valid JSON")


def test_predict_non_finite_number_is_422(shared_client: TestClient, small_db: str) -> None:
    rows = records(small_db, "decision_support", 1)
    text = json.dumps({"records": rows}).replace(
        f'"stock_level_pct": {rows[0]["stock_level_pct"]}', '"stock_level_pct": NaN')
    body = error(shared_client.post("/ml/models/decision_support/predict", content=text,
                                    headers={"content-type": "application/json"}), 422)
    assert "body.records[0].stock_level_pct" in body["message"]


def test_a_tampered_production_file_is_not_served_and_is_alerted(
        make_client: ClientFactory, small_db: str) -> None:
    client = make_client()
    production = app_settings(client).MODELS_DIR / ROLLBACK / "v0002.skops"
    production.write_bytes(production.read_bytes() + b"tampered")
    body = {"records": records(small_db, ROLLBACK, 2)}
    data_ = ok(client.post(f"/ml/models/{ROLLBACK}/predict", json=body))
    assert (data_["version"], data_["served_as"]) == ("v0001", "previous")
    ok(client.post(f"/ml/models/{ROLLBACK}/predict", json=body))  # cached: one alert only
    alerts = ok(client.get("/ml/alerts"))["alerts"]
    assert [(a["kind"], a["model"]) for a in alerts] == [("checksum_mismatch", ROLLBACK)]
    error(client.post(f"/ml/models/{ROLLBACK}/predict", json={**body, "version": "v0002"}), 409)
