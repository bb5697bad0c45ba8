"""`thrifty config import-litellm` turns a LiteLLM config.yaml into a thrifty TOML config that
serves (checked end to end against a fake upstream), reports what did not map, and `serve
--config x.yaml` says YAML is LiteLLM's format and names the import command."""

from __future__ import annotations

import os
import subprocess
import sys

import openai

from thrifty.config import load_config
from thrifty.gateway.assemble import create_app
from thrifty.spend.contract import OpenSpendControl
from thrifty.testing.fake_upstream import FakeUpstream
from thrifty.testing.server import running

CONFIG = """
model_list:
  - model_name: fast
    litellm_params:
      model: openai/up-fast
      api_base: {base}
      api_key: os.environ/FAKE_UPSTREAM_KEY
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
  - model_name: fast
    litellm_params:
      model: openai/up-fast-2
      api_base: {base}
      api_key: os.environ/FAKE_UPSTREAM_KEY
      weight: 3
      rpm: 100
  - model_name: claude
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_key: sk-ant-this-must-not-be-copied
  - model_name: on-bedrock
    litellm_params:
      model: bedrock/anthropic.claude-v2
router_settings:
  routing_strategy: latency-based-routing
  fallbacks: [{{"fast": ["claude"]}}]
litellm_settings:
  max_budget: 25
  budget_duration: 30d
general_settings:
  master_key: sk-litellm-master
"""


def thrifty(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    return subprocess.run([sys.executable, "-m", "thrifty.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_import_litellm_config_then_serve_it(tmp_path):
    with FakeUpstream("ok") as up:
        (tmp_path / "config.yaml").write_text(CONFIG.format(base=up.base_url))
        run = thrifty("config", "import-litellm", "config.yaml", cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        assert "sk-ant-this-must-not-be-copied" not in run.stdout and "sk-litellm-master" not in run.stdout
        report = run.stderr
        for unmapped in ("litellm_params.rpm", "a literal api_key is not copied", "'bedrock' has no thrifty adapter",
                         "routing_strategy", "thrifty budgets set --team TEAM --amount 25 --period monthly",
                         "THRIFTY_ADMIN_KEY"):
            assert unmapped in report, report
        (tmp_path / "thrifty.toml").write_text(run.stdout)
        config = load_config(tmp_path / "thrifty.toml", env={"FAKE_UPSTREAM_KEY": "sk-fake"})
        fast = config.models["fast"]
        assert [(d.model, d.weight) for d in fast.deployments] == [("up-fast", 1.0), ("up-fast-2", 3.0)]
        assert fast.fallbacks == ("claude",) and fast.info.input_cost_per_token == 1e-6
        assert "on-bedrock" not in config.models
        assert config.providers[fast.deployments[0].provider].api_key == "sk-fake"
        assert config.providers[config.models["claude"].deployments[0].provider].api_key is None
        app = create_app(config, spend=OpenSpendControl())
        with running(app) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="fast", messages=[{"role": "user", "content": "hi"}])
            assert raw.headers["x-thrifty-model"] == "fast" and raw.parse().choices[0].message.content
        assert up.hits >= 1


def test_serve_with_a_yaml_config_names_the_import_command(tmp_path):
    (tmp_path / "litellm_config.yaml").write_text(CONFIG.format(base="http://127.0.0.1:9/v1"))
    run = thrifty("serve", "--config", "litellm_config.yaml", cwd=tmp_path)
    assert run.returncode == 2
    assert "YAML is LiteLLM's config format" in run.stderr
    assert "thrifty config import-litellm litellm_config.yaml > thrifty.toml" in run.stderr
    (tmp_path / "config.toml").write_text(CONFIG.format(base="http://127.0.0.1:9/v1"))  # YAML, misnamed
    run = thrifty("serve", "--config", "config.toml", cwd=tmp_path)
    assert run.returncode == 2 and "looks like a LiteLLM YAML config" in run.stderr


def test_import_of_a_file_that_is_not_a_litellm_config(tmp_path):
    (tmp_path / "bad.yaml").write_text("- just\n- a list\n")
    run = thrifty("config", "import-litellm", "bad.yaml", cwd=tmp_path)
    assert run.returncode == 2 and "not a LiteLLM config" in run.stderr
    (tmp_path / "broken.yaml").write_text("model_list: [\n")
    run = thrifty("config", "import-litellm", "broken.yaml", cwd=tmp_path)
    assert run.returncode == 2 and "not valid YAML" in run.stderr
