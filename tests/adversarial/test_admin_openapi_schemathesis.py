"""The admin OpenAPI says what the admin API does (issue 11.7), checked on ``thrifty serve``.

schemathesis (every check: status codes and headers the schema documents, 405 with ``Allow``,
schema-valid bodies accepted and invalid ones refused, resources gone after DELETE, ...) for a
fixed number of examples with a fixed seed, bounded for CI; then the cases it found before,
spelled out.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import httpx
import pytest
from adv_setup import ADMIN_KEY, Gateway, make_keys, write_toml

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
CONFIG = pathlib.Path(__file__).with_name("schemathesis.toml")
EXAMPLES, SEED = 25, 20261204


@pytest.fixture(scope="module")
def admin(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openapi")
    (tmp / "gw").mkdir()
    db_url = f"sqlite:///{tmp / 'gw' / 'spend.db'}"
    make_keys(db_url, {"base": "10"})
    config = write_toml(tmp / "gw.toml", {
        "data_dir": str(tmp / "gw"),
        "spend": {"database_url": db_url},
        "providers": {"replay": {"type": "replay", "source": "packaged"}},
        "models": {},
    })
    with Gateway(config, tmp / "gw.log") as gw:
        yield gw.url + "/admin", tmp


def test_schemathesis_all_checks(admin):
    """Every check is on by default (``--checks all`` would also override the one exception in
    schemathesis.toml, which CLI options take precedence over)."""
    url, tmp = admin
    proc = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--no-color", "--config-file", str(CONFIG), "run",
         url + "/openapi.json", "--url", url, "--max-examples", str(EXAMPLES),
         "--seed", str(SEED), "--header", f"Authorization: Bearer {ADMIN_KEY}", "--request-timeout", "30"],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp,
    )
    out = proc.stdout + proc.stderr
    summary = out[out.rfind("Test cases:"):] if "Test cases:" in out else out[-2000:]
    print(summary)
    assert proc.returncode == 0, out[-6000:]
    # Schemathesis's own warnings (e.g. an operation whose cases all ended in 4xx) are printed
    # with the summary; a failed check would have made the run exit non-zero above.
    assert "generated" in summary and " failed" not in summary.split("\n", 2)[1], summary


def test_405_lists_every_method_of_the_path(admin):
    url, _ = admin
    for path, allowed in (("/keys", {"GET", "POST"}), ("/keys/k", {"GET", "DELETE"}),
                          ("/policies/team/base", {"PUT", "DELETE"}), ("/keys/k/revoke", {"POST"})):
        r = httpx.patch(url + path, headers=ADMIN, timeout=10)
        assert r.status_code == 405, (path, r.text)
        assert allowed <= {m.strip() for m in r.headers["allow"].split(",")}, (path, r.headers)
        assert r.json()["error"]["code"] == "method_not_allowed"


def test_statuses_are_the_documented_ones(admin):
    url, _ = admin
    schema = httpx.get(url + "/openapi.json", timeout=10).json()["paths"]
    key = httpx.post(url + "/keys", json={"team_id": "base"}, headers=ADMIN, timeout=10)
    assert key.status_code == 201 and "201" in schema["/keys"]["post"]["responses"]
    revoked = httpx.post(url + f"/keys/{key.json()['id']}/revoke", headers=ADMIN, timeout=10)
    assert revoked.status_code == 200 and "200" in schema["/keys/{key_id}/revoke"]["post"]["responses"]
    again = httpx.post(url + "/teams", json={"id": "base"}, headers=ADMIN, timeout=10)
    assert again.status_code == 409 and "409" in schema["/teams"]["post"]["responses"]


def test_a_revoked_key_is_gone_unless_asked_for(admin):
    url, _ = admin
    key = httpx.post(url + "/keys", json={"team_id": "base"}, headers=ADMIN, timeout=10).json()["id"]
    assert httpx.get(url + f"/keys/{key}", headers=ADMIN).status_code == 200
    assert httpx.delete(url + f"/keys/{key}", headers=ADMIN).json()["revoked_at"]
    assert httpx.get(url + f"/keys/{key}", headers=ADMIN).status_code == 404
    shown = httpx.get(url + f"/keys/{key}?include_revoked=true", headers=ADMIN)
    assert shown.status_code == 200 and shown.json()["active"] is False
    assert key not in {k["id"] for k in httpx.get(url + "/keys", headers=ADMIN).json()["data"]}
