import json
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "routing"


@pytest.fixture(scope="module")
def fixtures() -> Path:
    return FIXTURE_DIR


def thrifty(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "thrifty.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600, check=False)


@pytest.fixture(scope="module")
def trained(fixtures, tmp_path_factory):
    out = tmp_path_factory.mktemp("router") / "r"
    p = thrifty("router", "train", "--data", fixtures / "routerbench", "--out", out)
    assert p.returncode == 0, p.stderr
    return out


def test_score_writes_every_model(trained, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": 1, "prompt": "Write a function that adds two numbers."}\n'
                   '{"id": "b", "prompt": "Which is heavier, a kilo of iron or of feathers?"}\n')
    out = tmp_path / "out.jsonl"
    p = thrifty("router", "score", "--router", trained, "--input", inp, "--output", out)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    models = json.loads((trained / "router.json").read_text())["models"]
    assert [r["id"] for r in rows] == [1, "b"]
    for r in rows:
        assert sorted(r["quality"]) == sorted(models)
        assert all(0 <= v <= 1 for v in r["quality"].values())


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"id": 1, "prompt": ""}\n', "prompt must be a non-empty string"),
        (b"\xff\xfe\n", "not UTF-8"),
        (b"not json\n", "not a JSON object"),
        (b'{"id": 1}\n', "expected"),
    ],
)
def test_score_bad_input(trained, tmp_path, content, message):
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(content)
    p = thrifty("router", "score", "--router", trained, "--input", inp, "--output", tmp_path / "o")
    assert p.returncode == 2
    assert message in p.stderr and "Traceback" not in p.stderr


def test_train_on_garbage_column_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,modelA,modelB\nhi,True,banana\n")
    p = thrifty("router", "train", "--data", bad, "--out", tmp_path / "r")
    assert p.returncode == 2 and "banana" in p.stderr and "Traceback" not in p.stderr


def test_eval_writes_report_and_plots(fixtures, tmp_path):
    p = thrifty("router", "eval", "--data", fixtures, "--out", tmp_path, "--folds", "3", "--bootstrap", "30")
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["protocols"]) == {"mmlu-subjects", "mmlu-to-gsm8k", "routerbench-cv"}
    for name in report["protocols"]:
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    assert "APGR" in p.stdout


def test_calibrate_adds_a_profile_that_holds_its_share(fixtures, trained, tmp_path):
    import shutil

    import numpy as np

    from thrifty.router import Router, data
    from thrifty.router.calibrate import share_for_weight

    router_dir = tmp_path / "r"
    shutil.copytree(trained, router_dir)
    prompts = data.load([fixtures / "routerbench"]).prompts
    calib, held = prompts[::2], prompts[1::2]  # same mix of tasks in both halves
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(calib)))
    p = thrifty("router", "calibrate", "--router", router_dir, "--input", inp, "--name", "gpt4-30", "--share", 0.3)
    assert p.returncode == 0, p.stderr
    import re

    said = re.search(r"added profile 'gpt4-30': .*: ([\d.]+)% to gpt-4-1106-preview", p.stdout)
    assert said and abs(float(said.group(1)) - 30) < 2, p.stdout  # 135 prompts: steps of 0.7%
    # it says how far the share may drift on new traffic: sqrt(0.3 * 0.7 / 135) = 3.9%
    error = re.search(r"expect ([\d.]+)% \+- ([\d.]+)% \(standard error over (\d+) prompts", p.stdout)
    assert error and error.group(3) == str(len(calib)), p.stdout
    assert abs(float(error.group(2)) - 100 * np.sqrt(0.3 * 0.7 / len(calib))) < 0.2
    p = thrifty("router", "calibrate", "--router", router_dir, "--input", inp, "--name", "keep95", "--keep", 0.95)
    assert p.returncode == 0, p.stderr
    router = Router.load(router_dir)
    assert {"auto", "auto-cheap", "auto-best", "gpt4-30", "keep95"} <= set(router.profiles)
    # the share holds on prompts it was not calibrated on
    unit = np.array([router.reference_costs[m] for m in router.models])
    realized = share_for_weight(router.score_many(held), unit, router.profiles["gpt4-30"].value)
    assert abs(realized - 0.3) < 0.1
    # the predictor files were not rewritten, only router.json
    assert (router_dir / "predictor.npz").read_bytes() == (trained / "predictor.npz").read_bytes()


@pytest.mark.parametrize("extra, message", [
    (["--share", "1.5"], "--share must be within [0, 1]"),
    (["--keep", "0"], "quality share to keep must be within (0, 1]"),
    (["--share", "0.2", "--keep", "0.9"], "not allowed with argument"),
])
def test_calibrate_bad_input(trained, tmp_path, extra, message):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "prompt": f"question {i}?"}) + "\n" for i in range(30)))
    p = thrifty("router", "calibrate", "--router", trained, "--input", inp, "--name", "x", *extra)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr


def test_calibrate_needs_enough_prompts(trained, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": 1, "prompt": "hello?"}) + "\n")
    p = thrifty("router", "calibrate", "--router", trained, "--input", inp, "--name", "x", "--share", 0.2)
    assert p.returncode == 2 and "need at least 20 prompts" in p.stderr
