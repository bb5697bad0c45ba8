"""GET /v1/models and GET /v1/models/{model} with spend control on: a key is required (401 in
OpenAI's format without one or with a bad one), and each key sees only the models its key and
team policies permit (models, providers, origin countries, regions, max price), plus the routing
profiles when some routable model is permitted. Driven by the official openai SDK; bodies are
checked against OpenAI's own schemas."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from gw_openai_schema import SPEC, validate
from gw_setup import gateway_doc, serve_gateway

from thrifty.config import build_config
from thrifty.gateway.assemble import build_spend, create_app
from thrifty.multipliers.settings import CascadeSettings
from thrifty.spend import admin_ops
from thrifty.testing.server import running

ADMIN = "sk-thr-admin-models"
CASCADE = ("mistralai/mistral-7b-chat", "gpt-4-1106-preview")
PROFILES = {"auto", "auto-cheap", "auto-best"}

# team/key -> policy rules (None: no policy)
TEAMS: dict[str, dict[str, Any] | None] = {
    "open": None,
    "narrow": {"allow_models": ["m-ok", "m-anth"]},
    "fr": {"allow_origin_countries": ["FR"]},
    "cheap": {"max_usd_per_mtok": 0.5},
    "providers": {"allow_providers": ["ok"]},
    "regions": {"deny_regions": ["local"]},
}


@pytest.fixture(scope="module")
def served(upstreams, tmp_path_factory) -> Iterator[tuple[str, dict[str, str], Any]]:
    doc = gateway_doc(upstreams, tmp_path_factory.mktemp("models"))
    doc["spend"] = {"admin_key": ADMIN}
    config = build_config(doc, env={})
    config.cascade = CascadeSettings(CASCADE)
    spend, mounts = build_spend(config)
    keys: dict[str, str] = {}
    for team, rules in TEAMS.items():
        admin_ops.create_team(spend.db, team)
        _, keys[team] = admin_ops.create_key(spend.db, team_id=team)
        if rules is not None:
            admin_ops.set_policy(spend.db, "team", team, rules)
    # A key policy narrows its team's: both apply.
    record, keys["fr-key"] = admin_ops.create_key(spend.db, team_id="fr")
    admin_ops.set_policy(spend.db, "key", record["id"], {"deny_models": ["mistralai/mistral-7b*"]})
    spend.reload()
    app = create_app(config, spend=spend, mounts=mounts)
    with running(app) as url:
        yield url, keys, app.gw


def _client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def _listed(url: str, key: str) -> set[str]:
    raw = httpx.get(url + "/v1/models", headers={"authorization": f"Bearer {key}"})
    assert raw.status_code == 200, raw.text
    validate(raw.json(), "ListModelsResponse")
    ids = [m.id for m in _client(url, key).models.list().data]
    assert len(ids) == len(set(ids)) and set(ids) == {m["id"] for m in raw.json()["data"]}
    return set(ids)


def _routable(gw: Any, names: set[str]) -> bool:
    return any(gw.models[n].route and gw.models[n].info.priced for n in names)


def test_models_need_a_key(served):
    url, _, _ = served
    for headers in ({}, {"authorization": "Bearer sk-thr-nope"}, {"x-api-key": "nope"}):
        for path in ("/v1/models", "/v1/models/m-ok", "/models"):
            r = httpx.get(url + path, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            if SPEC.is_file():
                validate(r.json(), "ErrorResponse")
            assert r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        _client(url, "sk-thr-nope").models.list()
    with pytest.raises(openai.AuthenticationError):
        _client(url, "sk-thr-nope").models.retrieve("m-ok")


def test_each_key_lists_what_its_policies_permit(served):
    url, keys, gw = served
    every = set(gw.models)
    info = {n: gw.models[n].info for n in every}
    expected = {
        "open": every,
        "narrow": {"m-ok", "m-anth"},
        "fr": {n for n in every if info[n].origin_country == "FR"},
        "fr-key": {
            n
            for n in every
            if info[n].origin_country == "FR" and not n.startswith("mistralai/mistral-7b")
        },
        "cheap": {
            n
            for n in every
            if info[n].priced
            and info[n].input_cost_per_token <= 0.5e-6
            and info[n].output_cost_per_token <= 0.5e-6
        },
        "providers": {n for n in every if info[n].provider == "ok"},
        "regions": {n for n in every if info[n].regions and "local" not in info[n].regions},
    }
    assert expected["fr"] and expected["cheap"] and expected["regions"] == {"m-anth"}
    assert len(expected["fr-key"]) == len(expected["fr"]) - 1
    for name, models in expected.items():
        listed = _listed(url, keys[name])
        profiles = PROFILES if _routable(gw, models) else set()
        cascade = {"auto-cascade"} if models & set(CASCADE) else set()
        assert listed - PROFILES - {"auto-cascade"} == models, name
        assert listed & PROFILES == profiles, name
        assert listed & {"auto-cascade"} == cascade, name
    # The admin key has no policy: everything.
    assert _listed(url, ADMIN) >= every | PROFILES | {"auto-cascade"}


def test_listed_models_are_the_callable_ones(served):
    url, keys, _ = served
    narrow = _client(url, keys["narrow"])
    assert narrow.chat.completions.create(
        model="m-ok", messages=[{"role": "user", "content": "hi"}]
    ).choices
    with pytest.raises(openai.PermissionDeniedError):  # not listed: policy refuses it
        narrow.chat.completions.create(
            model="gpt-4-1106-preview", messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.PermissionDeniedError):  # no routing for this key
        narrow.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])


def test_retrieve(served):
    url, keys, gw = served
    fr = _client(url, keys["fr"])
    for model in ("mistralai/mixtral-8x7b-chat", "auto", "auto-cheap", "auto-cascade"):
        got = fr.models.retrieve(model)  # a model id with a slash works too
        assert got.id == model and got.object == "model"
        raw = httpx.get(
            url + f"/v1/models/{model}", headers={"authorization": f"Bearer {keys['fr']}"}
        )
        assert raw.status_code == 200
        validate(raw.json(), "Model")
    assert (
        fr.models.retrieve("mistralai/mixtral-8x7b-chat").owned_by
        == gw.models["mistralai/mixtral-8x7b-chat"].info.provider
    )
    for key, model in (
        ("fr", "gpt-4-1106-preview"),  # exists, not permitted
        ("narrow", "auto"),  # routing not open to this key
        ("narrow", "auto-cascade"),
        ("open", "no-such-model"),  # does not exist
        ("open", ""),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            _client(url, keys[key]).models.retrieve(model or "x")  # the SDK refuses an empty id
        assert err.value.body["code"] == "model_not_found"
        raw = httpx.get(
            url + f"/v1/models/{model}", headers={"authorization": f"Bearer {keys[key]}"}
        )
        assert raw.status_code == 404, raw.text
        if SPEC.is_file():
            validate(raw.json(), "ErrorResponse")
        assert raw.json()["error"]["code"] == "model_not_found"
    r = httpx.delete(url + "/v1/models/m-ok", headers={"authorization": f"Bearer {keys['open']}"})
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_without_spend_control_models_stay_open(upstreams, tmp_path):
    with serve_gateway(gateway_doc(upstreams, tmp_path)) as (url, app):
        ids = {m["id"] for m in httpx.get(url + "/v1/models").json()["data"]}
        assert set(app.gw.models) | {"auto"} <= ids
        got = httpx.get(url + "/v1/models/m-ok")
        assert got.status_code == 200 and got.json()["id"] == "m-ok"
        validate(got.json(), "Model")
        assert _client(url, "anything").models.retrieve("auto").id == "auto"
        missing = httpx.get(url + "/v1/models/nope")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
