import functools
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from thrifty.router import data
from thrifty.router.data import DataError

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "routing"


@pytest.fixture(scope="module")
def fixtures() -> Path:
    return FIXTURE_DIR


def test_loads_both_formats_from_a_directory(fixtures):
    d = data.load([fixtures])
    assert "gpt-4-1106-preview" in d.models and "zero-one-ai/Yi-34B-Chat" in d.models
    groups = set(d.groups)
    assert "gsm8k" in groups and "mmlu/anatomy" in groups and "routerbench/mbpp" in groups
    # RouteLLM rows have no label for RouterBench-only models: missing, not wrong.
    j = d.models.index("zero-one-ai/Yi-34B-Chat")
    mmlu = np.array([g.startswith("mmlu/") for g in d.groups])
    assert np.isnan(d.labels[mmlu, j]).all()
    assert set(np.unique(d.labels[~np.isnan(d.labels)])) <= {0.0, 1.0}
    # RouterBench carries real per-call costs; RouteLLM does not.
    rb = np.array([g.startswith("routerbench/") for g in d.groups])
    assert np.isnan(d.costs[~rb]).all()
    known = d.costs[rb][~np.isnan(d.costs[rb])]
    assert known.size > 0 and (known > 0).all()


def test_contaminated_prompts_are_left_out(fixtures):
    d = data.load([fixtures / "routellm" / "mmlu"])
    listed = (fixtures / "routellm" / "mmlu" / "contaminated_prompts.jsonl").read_text()
    assert len(d) == 10 * 50 - 1
    import json

    assert json.loads(listed)["eval_prompt"] not in d.prompts


def test_routerbench_prompt_lists_are_joined(fixtures):
    d = data.load([fixtures / "routerbench" / "mbpp_train.csv"])
    assert len(d) == 90
    assert not any(p.startswith("['") for p in d.prompts)


def test_loads_from_a_url(fixtures):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(fixtures), )
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/routerbench/winograde_train.csv"
        d = data.load([url])
        assert len(d) == 90 and d.groups[0] == "routerbench/winogrande"
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"prompt,modelA\n\xff\xfe broken,True\n", "not UTF-8"),
        (b"prompt,modelA\nhello,maybe\n", "expected a 0/1 or True/False label"),
        (b"prompt,modelA\n   ,True\n", "empty prompt"),
        (b"prompt,modelA\nhello,True,extra\n", "3 fields where the header has 2"),
        (b"question,modelA\nhello,True\n", "no 'prompt' column"),
        (b"", "empty file"),
    ],
)
def test_malformed_files_get_clear_errors(tmp_path, content, message):
    f = tmp_path / "bad.csv"
    f.write_bytes(content)
    with pytest.raises(DataError) as exc:
        data.load([f])
    assert message in str(exc.value) and "bad.csv" in str(exc.value)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        data.load([tmp_path / "nope"])


MIXTRAL_RB, MIXTRAL = "mistralai/mixtral-8x7b-chat", "mistralai/Mixtral-8x7B-Instruct-v0.1"


def test_aliases_merge_columns_that_name_one_model(fixtures):
    raw = data.load([fixtures])
    merged = data.load([fixtures], aliases={MIXTRAL_RB: MIXTRAL})
    assert MIXTRAL_RB not in merged.models and MIXTRAL in merged.models
    assert len(merged.models) == len(raw.models) - 1
    j_raw, j_rb, j = raw.models.index(MIXTRAL), raw.models.index(MIXTRAL_RB), merged.models.index(MIXTRAL)
    rb = np.array([g.startswith("routerbench/") for g in raw.groups])
    # RouterBench rows now carry their Mixtral labels and costs under the canonical name...
    np.testing.assert_array_equal(merged.labels[rb, j], raw.labels[rb, j_rb])
    np.testing.assert_array_equal(merged.costs[rb, j], raw.costs[rb, j_rb])
    # ...and RouteLLM rows keep their own.
    np.testing.assert_array_equal(merged.labels[~rb, j], raw.labels[~rb, j_raw])


def test_alias_conflicts_keep_the_canonical_label(fixtures):
    raw = data.load([fixtures / "routerbench"])
    a, b = "gpt-3.5-turbo-1106", "claude-instant-v1"
    merged = raw.with_aliases({a: b})
    ja, jb, jm = raw.models.index(a), raw.models.index(b), merged.models.index(b)
    both = ~np.isnan(raw.labels[:, ja]) & ~np.isnan(raw.labels[:, jb])
    assert both.any()
    np.testing.assert_array_equal(merged.labels[both, jm], raw.labels[both, jb])


@pytest.mark.parametrize("items, message", [
    (["nonsense"], "expects FROM=TO"),
    (["=x"], "expects FROM=TO"),
    (["a=a"], "maps to itself"),
    (["no/such-model=x"], "no model 'no/such-model'"),
])
def test_bad_aliases_are_clear_errors(fixtures, items, message):
    from thrifty.errors import UsageError

    with pytest.raises(UsageError, match=message):
        data.load([fixtures / "routerbench"], aliases=data.parse_aliases(items))
