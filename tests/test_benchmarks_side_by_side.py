"""The side-by-side benchmark's pieces that decide what is measured: which requirements another
commit needs installed, that its processes import its own tree, and the wrk script's bounds."""

from __future__ import annotations

import pytest

from benchmarks import checkout
from benchmarks.gateway import _STOPPED, PROMPT, _wrk_script


def _pyproject(root, *deps: str) -> None:
    listed = ", ".join(f'"{d}"' for d in deps)
    (root / "pyproject.toml").write_text(f'[project]\nname = "x"\ndependencies = [{listed}]\n')


def test_unmet_lists_missing_and_mismatched_requirements_only(tmp_path):
    _pyproject(
        tmp_path,
        "orjson>=3.10,<4",  # installed, in range
        "orjson<1",  # installed, out of range
        "thrifty-no-such-package>=1",
        "thrifty-no-such-package-either; python_version < '3'",  # not for this interpreter
    )
    assert checkout.unmet(tmp_path) == ["orjson<1", "thrifty-no-such-package>=1"]


def test_a_tree_without_its_own_thrifty_is_refused(tmp_path):
    _pyproject(tmp_path)  # nothing unmet; but ``import thrifty`` would find this checkout's
    with pytest.raises(RuntimeError, match="not the tree"):
        checkout.side("other", "0" * 40, tmp_path)


def test_this_checkout_runs_its_own_tree():
    side = checkout.this_checkout()
    assert side.root == checkout.ROOT and side.env["PYTHONPATH"].split(":")[0] == str(checkout.ROOT)


def test_wrk_script_stops_after_the_count_and_never_repeats_a_prompt():
    body = {"model": "m", "messages": [{"role": "user", "content": PROMPT}]}
    bounded = _wrk_script(body, {}, vary=False, stop_after=250)
    assert "done == 250" in bounded and _STOPPED in bounded and "request = " not in bounded
    assert "response = " not in _wrk_script(body, {}, vary=False, stop_after=None)
    first, second = (_wrk_script(body, {}, vary=True, stop_after=None) for _ in range(2))
    tag = lambda lua: lua.split("(variant ")[1].split("'")[0]
    assert tag(first) != tag(second)  # a later run's prompts are new to the router and the cache


def test_cache_backend_puts_each_side_on_its_own_redis_database():
    import argparse
    import tomllib

    from service_urls import redis_url, required

    from benchmarks.side_by_side import CACHE_CONFIG, with_backend
    from thrifty.multipliers.settings import parse_settings

    url = required(redis_url(), "Redis").rsplit("/", 1)[0]
    args = argparse.Namespace(cache_backend=url)
    a, b = (parse_settings(tomllib.loads(with_backend(CACHE_CONFIG, args, s)))[0] for s in "AB")
    assert (a.backend, b.backend) == (url + "/1", url + "/2")
    assert a.routes["bench-model"].mode == "exact"  # the route is still the route
    assert with_backend("", args, "A") == ""  # the plain phase has no cache
    none = argparse.Namespace(cache_backend=None)
    assert with_backend(CACHE_CONFIG, none, "A") == CACHE_CONFIG  # default: each side's SQLite
