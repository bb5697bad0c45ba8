"""``thrifty config import-litellm``: a LiteLLM proxy ``config.yaml`` as a thrifty TOML config.

What maps: ``model_list`` entries (each becomes a deployment of its ``model_name``; several entries
with one name are load-balanced by ``weight``), ``litellm_params.model``'s provider prefix
(``openai/``, ``anthropic/``, ``gemini/``, ``openrouter/``, ... or any OpenAI-compatible server
with ``api_base``), ``api_key: os.environ/NAME`` (becomes ``api_key_env``), prices
(``input_cost_per_token`` / ``output_cost_per_token`` in ``litellm_params`` or ``model_info``),
``fallbacks`` (``router_settings`` or ``litellm_settings``), ``general_settings.database_url``.
Everything else is listed in the report (stderr) with what to do instead: literal API keys are
never copied into the output, and budgets, which thrifty keeps per key, user or team in its
database, become the ``thrifty budgets set`` commands to run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thrifty.errors import UsageError

# LiteLLM provider prefix -> (thrifty provider type, default base URL, default key variable)
PREFIXES: dict[str, tuple[str, str | None, str | None]] = {
    "openai": ("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    "anthropic": ("anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY"),
    "gemini": ("openai", "https://generativelanguage.googleapis.com/v1beta/openai", "GEMINI_API_KEY"),
    "openrouter": ("openai", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "deepseek": ("openai", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
    "together_ai": ("openai", "https://api.together.xyz/v1", "TOGETHER_API_KEY"),
    "groq": ("openai", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "mistral": ("openai", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    "fireworks_ai": ("openai", "https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY"),
    "hosted_vllm": ("openai", None, None),
    "ollama": ("openai", "http://localhost:11434/v1", None),
    "ollama_chat": ("openai", "http://localhost:11434/v1", None),
}
PRICE_KEYS = ("input_cost_per_token", "output_cost_per_token")
MAPPED_PARAMS = {"model", "api_key", "api_base", "base_url", "weight", *PRICE_KEYS}
ENV_PREFIX = "os.environ/"
DURATIONS = {"1d": "daily", "24h": "daily", "7d": "weekly", "1w": "weekly", "30d": "monthly", "1mo": "monthly"}


@dataclass
class Imported:
    doc: dict[str, Any]
    unmapped: list[str] = field(default_factory=list)  # one line each: what, and what to do instead


def _env_name(value: Any) -> str | None:
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        return value[len(ENV_PREFIX):]
    return None


def convert(config: Mapping[str, Any]) -> Imported:
    """The thrifty config document for a parsed LiteLLM config, and what did not map."""
    out = Imported({"providers": {}, "models": {}})
    providers: dict[tuple, str] = {}
    known_top = {"model_list", "router_settings", "litellm_settings", "general_settings"}
    for key in sorted(set(config) - known_top):
        out.unmapped.append(f"{key}: not a setting thrifty has (left out)")
    entries = config.get("model_list") or []
    if not isinstance(entries, list):
        raise UsageError("model_list must be a list of {model_name, litellm_params}")
    for i, entry in enumerate(entries):
        where = f"model_list[{i}]"
        if not isinstance(entry, Mapping) or not entry.get("model_name"):
            out.unmapped.append(f"{where}: no model_name (left out)")
            continue
        name = str(entry["model_name"])
        params = dict(entry.get("litellm_params") or {})
        upstream = str(params.get("model") or "")
        prefix, _, rest = upstream.partition("/")
        if not rest:
            prefix, rest = "openai", upstream
        if prefix not in PREFIXES:
            out.unmapped.append(f"{where} ({name}): provider {prefix!r} has no thrifty adapter; left out "
                                "(an OpenAI-compatible endpoint works as openai/<model> with api_base)")
            continue
        ptype, base, key_env = PREFIXES[prefix]
        base = params.get("api_base") or params.get("base_url") or base
        if base is None:
            out.unmapped.append(f"{where} ({name}): {prefix} needs api_base (left out)")
            continue
        api_key = params.get("api_key")
        env = _env_name(api_key)
        if api_key is not None and env is None:
            out.unmapped.append(f"{where} ({name}): a literal api_key is not copied; put it in an environment "
                                f"variable and set api_key_env (default here: {key_env or 'none'})")
        key_env = env or key_env
        pkey = (ptype, base, key_env)
        if pkey not in providers:
            pname = prefix if prefix not in providers.values() else f"{prefix}-{len(providers) + 1}"
            providers[pkey] = pname
            section: dict[str, Any] = {"type": ptype, "base_url": base}
            if key_env:
                section["api_key_env"] = key_env
            out.doc["providers"][pname] = section
        model = out.doc["models"].setdefault(name, {"deployments": []})
        dep: dict[str, Any] = {"provider": providers[pkey], "model": rest}
        if params.get("weight") is not None:
            dep["weight"] = float(params["weight"])
        model["deployments"].append(dep)
        info = entry.get("model_info") or {}
        for k in PRICE_KEYS:
            value = params.get(k, info.get(k) if isinstance(info, Mapping) else None)
            if value is not None:
                model[k] = float(value)
        for k in sorted(set(params) - MAPPED_PARAMS):
            out.unmapped.append(f"{where} ({name}): litellm_params.{k} not mapped"
                                + (" (thrifty's rate limits are per key and team: thrifty keys create --rpm/--tpm)"
                                   if k in ("rpm", "tpm") else ""))
    _fallbacks(config, out)
    _settings(config, out)
    return out


def _fallbacks(config: Mapping[str, Any], out: Imported) -> None:
    for section in ("router_settings", "litellm_settings"):
        for item in (config.get(section) or {}).get("fallbacks") or []:
            if not isinstance(item, Mapping):
                continue
            for model, targets in item.items():
                targets = [t for t in (targets or []) if isinstance(t, str)]
                if model not in out.doc["models"]:
                    out.unmapped.append(f"{section}.fallbacks: {model!r} is not in model_list (left out)")
                    continue
                missing = [t for t in targets if t not in out.doc["models"]]
                if missing:
                    out.unmapped.append(f"{section}.fallbacks of {model!r}: {', '.join(missing)} not in "
                                        "model_list (left out)")
                ok = [t for t in targets if t in out.doc["models"]]
                if ok:
                    out.doc["models"][model]["fallbacks"] = ok


def _settings(config: Mapping[str, Any], out: Imported) -> None:
    router = dict(config.get("router_settings") or {})
    router.pop("fallbacks", None)
    for k in sorted(router):
        hint = " (thrifty balances by weight and skips deployments whose circuit is open)" \
            if k == "routing_strategy" else ""
        out.unmapped.append(f"router_settings.{k} not mapped{hint}")
    lsettings = dict(config.get("litellm_settings") or {})
    lsettings.pop("fallbacks", None)
    budget, duration = lsettings.pop("max_budget", None), lsettings.pop("budget_duration", None)
    if budget is not None:
        period = DURATIONS.get(str(duration or "30d"), "monthly")
        out.unmapped.append(f"litellm_settings.max_budget {budget} ({duration or 'no duration'}): thrifty's "
                            f"budgets are per team, user or key; run: thrifty budgets set --team TEAM "
                            f"--amount {budget} --period {period}")
    for k in sorted(lsettings):
        out.unmapped.append(f"litellm_settings.{k} not mapped")
    general = dict(config.get("general_settings") or {})
    db = general.pop("database_url", None)
    if db is not None:
        env = _env_name(db)
        if env:
            out.unmapped.append(f"general_settings.database_url from ${env}: thrifty reads [spend] "
                                "database_url from the file; write the URL there")
        elif re.match(r"postgres(ql)?://", str(db)):
            out.doc["spend"] = {"database_url": str(db)}
    if "master_key" in general:
        general.pop("master_key")
        out.unmapped.append("general_settings.master_key: set THRIFTY_ADMIN_KEY instead (not copied)")
    for k in sorted(general):
        out.unmapped.append(f"general_settings.{k} not mapped")


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path} is not a LiteLLM config (a YAML mapping with model_list)")
    return doc


# --- a small TOML writer for the documents above (strings, numbers, lists, nested tables) -------

def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def to_toml(doc: Mapping[str, Any], header: str = "") -> str:
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]

    def table(path: list[str], t: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in t.items() if not isinstance(v, Mapping)}
        if path and (scalars or not t):
            lines.append("")
            lines.append("[" + ".".join(_key(p) for p in path) + "]")
        for k, v in scalars.items():
            lines.append(f"{_key(k)} = {_value(v)}")
        for k, v in t.items():
            if isinstance(v, Mapping):
                table([*path, k], v)

    table([], doc)
    return "\n".join(lines).lstrip("\n") + "\n"
