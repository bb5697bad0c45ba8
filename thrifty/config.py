"""Gateway configuration: a TOML file, or the embedded default that runs offline.

A config names *providers* (an upstream protocol, a base URL and a key) and *models*
(the names clients use, each served by one or more deployments on providers, with
optional fallbacks and catalog overrides)::

    frontier_model = "gpt-4o"             # the counterfactual in x-thrifty-frontier-cost-usd
    data_dir = ".thrifty"                 # default: $THRIFTY_DATA_DIR or ./.thrifty
    router_path = "path/to/router"        # default: $THRIFTY_ROUTER or the packaged router
    router_reload_s = 2                   # check router.json this often; a change is served live (0: never)
    max_body_bytes = 33554432             # every endpoint: model calls, /admin, /v1/feedback, ...
    spend_enabled = true                  # false only to benchmark the bare proxy

    [timeouts]                            # seconds
    connect = 5
    first_token = 60                      # streams: first chunk, and between chunks
    total = 600

    [retry]
    attempts = 2                          # per deployment, jittered exponential backoff
    backoff_base = 0.2
    max_retry_after = 30                  # wait at most this for a 429's/503's Retry-After

    [circuit_breaker]
    failures = 5                          # consecutive, per deployment
    cooldown = 30

    [spend]                               # passed to thrifty.spend.from_config

    [providers.openai]
    type = "openai"                       # openai | anthropic | replay | offline | llama
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"
    ca_file = "corp-ca.pem"               # optional: trust these CAs (PEM file or hashed dir)
    proxy = "http://user:pass@proxy:3128" # optional: false = direct, whatever the environment

    [models."gpt-4o-mini"]
    provider = "openai"                   # or deployments = [{provider=..., model=..., weight=...}]
                                          # (a deployment may set origin_country and regions)
    fallbacks = ["gpt-4o"]
    input_cost_per_token = 1.5e-7         # any ModelInfo field overrides the catalog
    supports_vision = false               # capabilities: true / false; unset = the catalog's
    supports_function_calling = true      #   (tools), supports_response_schema (json_schema),
    openai_reasoning_params = true        #   supports_reasoning; see below

    [profiles.auto-thrifty]
    cost_weight = 0.8                     # or target_quality = 0.7

TLS to upstreams always verifies the certificate chain and the hostname. Without ``ca_file``,
the system store, which ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` replace as for Python's default
context; ``ca_file`` (a PEM bundle or a hashed directory; relative paths are relative to the
config file) replaces it for that provider. Without ``proxy``, a provider is reached through
``HTTPS_PROXY`` (https upstreams) or ``HTTP_PROXY`` (plain http ones), lowercase names first,
unless ``NO_PROXY`` matches its host: comma- or space-separated entries, ``*`` (everything),
domains (``example.com``, ``.example.com`` and ``*.example.com`` all match the domain and its
subdomains), IPs, CIDR blocks (``10.0.0.0/8``), any of them with ``:port``; names are not
resolved (``localhost`` does not match ``127.0.0.1``). ``proxy = false`` ignores the
environment. Proxies are ``http://`` ones: https upstreams go through a CONNECT tunnel (TLS
to the upstream inside it, verified as above), plain ones as absolute-form requests;
``user:pass@`` (percent-encoded) in the proxy URL becomes ``Proxy-Authorization: Basic``. A
certificate that does not verify, or a proxy that refuses (407, 403) or cannot be reached, is
a connection error: retried, then the model's fallbacks, else a 502 naming the cause (so is
an environment proxy of another scheme, such as ``socks5://``, for the providers it covers).
A provider's batch API calls (``batch_api = true``) use the same TLS trust and proxy.

Retries. ``retry.attempts`` tries per deployment, jittered backoff between them; a 429's or
503's ``Retry-After`` replaces the backoff when it is at most ``retry.max_retry_after`` and
fits what is left of ``timeouts.total`` (else the next deployment or fallback at once, and the
client gets the 429/503 with ``Retry-After`` when none is left). An attempt whose request
reached the upstream and got no answer counts as a retry and is charged its upper bound
(ledger ``error_type = "cost_estimated"``).

Capabilities. A model's ``supports_function_calling``, ``supports_vision`` and
``supports_response_schema`` come from the catalog where it says true or false explicitly;
where it is silent (self-hosted and replay models, sparse entries) the capability is unknown
and treated as present. A request with ``tools``/``functions``/``tool_choice``, an image part,
or ``response_format`` of type ``json_schema`` is routed (``auto``, profiles, fallbacks) only
to models not known to lack it; with none left it gets a 400 naming the capability, and so
does a request naming such a model explicitly (like an over-long prompt, it is refused before
any upstream call). ``openai_reasoning_params`` (default: ``supports_reasoning`` of OpenAI's
own models) marks a model that takes ``max_completion_tokens`` and no sampling parameters: on
its OpenAI-protocol deployments thrifty renames ``max_tokens`` to ``max_completion_tokens``
and, only when the gateway chose the model (a profile or a fallback), drops ``temperature``,
``top_p``, ``presence_penalty``, ``frequency_penalty``, ``logprobs`` and ``top_logprobs``,
listed in ``x-thrifty-dropped-params``. A model named by the client gets its sampling
parameters as sent, so the provider's own error says what it refuses.

With no file, :func:`default_document` describes the embedded default: replay providers for
the recorded benchmark models, plus real providers whose API keys are in the
environment.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thrifty.catalog.loader import Catalog
from thrifty.catalog.model import ModelInfo
from thrifty.errors import UsageError
from thrifty.multipliers.settings import (
    AffinitySettings,
    BatchSettings,
    CacheSettings,
    CascadeSettings,
    parse_affinity,
    parse_cascade,
    parse_settings,
)
from thrifty.paths import default_data_dir
from thrifty.providers.config import ProviderConfig, Timeouts
from thrifty.router.settings import (
    JudgeSettings,
    ModelHint,
    RouterSettings,
    parse_judge,
    parse_router,
    pop_hint,
)

PROVIDER_TYPES = ("openai", "anthropic", "replay", "offline", "llama")
LOCAL_TYPES = ("replay", "offline", "llama")  # no base_url


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 2  # tries per deployment before moving on
    backoff_base: float = 0.2  # seconds; doubled each retry, full jitter
    backoff_max: float = 4.0
    # The longest Retry-After (of a 429 or 503) waited for before retrying the same deployment;
    # a longer one moves on to the next deployment or fallback at once.
    max_retry_after: float = 30.0


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failures: int = 5  # consecutive failures that open a deployment's circuit
    cooldown: float = 30.0  # seconds before one probe request is let through


@dataclass(frozen=True, slots=True)
class Deployment:
    provider: str
    model: str  # the provider's name for the model
    weight: float = 1.0
    # OpenAI's reasoning-model parameter rules apply to calls on this deployment (the model's
    # openai_reasoning_params on a provider of type openai): set once at config load.
    reasoning_params: bool = False
    # What policy judges: this deployment's provider, origin country and hosting regions (the
    # model's name and prices), set at config load. Facts of each deployment, not of the
    # model's first one: a model served by gpt-4o-mini and by deepseek-chat is US on one and
    # CN on the other. None (deployments built by hand): the model's own info.
    info: ModelInfo | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True, slots=True)
class ModelConfig:
    info: ModelInfo
    deployments: tuple[Deployment, ...]
    fallbacks: tuple[str, ...] = ()
    route: bool = True  # a candidate for "auto"
    mode: str = "chat"  # chat | embedding
    # Request needs this model is known not to serve (from info's supports_* facts being false):
    # a subset of CAPABILITY_NEEDS, set once at config load so planning never scans the catalog.
    lacks: frozenset[str] = frozenset()
    hint: ModelHint | None = None  # what the operator says of it for learned routing ([models.x])


# Facts a deployment may state for itself (``deployments = [{..., origin_country = "CN"}]``),
# over the model's (``[models.x]``) and the catalog's for the deployment's own model.
DEPLOYMENT_FACTS = ("origin_country", "regions")


# What a request can need (thrifty.pipeline.schemas.ChatRequest.needs) -> the ModelInfo fact.
CAPABILITY_NEEDS = {
    "function_calling": "supports_function_calling",
    "vision": "supports_vision",
    "response_schema": "supports_response_schema",
}


def lacks_of(info: ModelInfo) -> frozenset[str]:
    """The needs ``info`` is known not to serve (an unknown capability counts as served)."""
    return frozenset(n for n, f in CAPABILITY_NEEDS.items() if getattr(info, f) is False)


@dataclass(frozen=True, slots=True)
class ProfileConfig:
    cost_weight: float | None = None
    target_quality: float | None = None


@dataclass(slots=True)
class GatewayConfig:
    data_dir: Path
    providers: dict[str, ProviderConfig]
    models: dict[str, ModelConfig]
    profiles: dict[str, ProfileConfig] = field(default_factory=dict)
    frontier_model: str = "gpt-4-1106-preview"
    default_profile: str = "auto"
    router_path: str | None = None  # None: the router shipped in the package
    router_reload_s: float = 2.0  # seconds between checks for a changed router.json; 0 = never
    expected_output_tokens: int = 256  # for the router's expected-cost estimate
    max_body_bytes: int = 32 * 1024 * 1024  # room for base64 images
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    spend: dict[str, Any] = field(default_factory=dict)
    spend_enabled: bool = (
        True  # false: no keys, budgets or ledger (benchmarks of the bare proxy only)
    )
    # The multipliers' sections (thrifty/multipliers/settings.py): [cache] (None: no response
    # cache), [batches], [cascade] (the auto-cascade profile), [affinity].
    cache: CacheSettings | None = None
    batches: BatchSettings = field(default_factory=BatchSettings)
    cascade: CascadeSettings = field(default_factory=CascadeSettings)
    affinity: AffinitySettings = field(default_factory=AffinitySettings)
    # Learned routing and the judge (thrifty/router/settings.py): [router], [judge].
    routing: RouterSettings = field(default_factory=RouterSettings)
    judge: JudgeSettings | None = None


def _max_body_bytes(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UsageError(f"max_body_bytes must be a positive integer (bytes), got {value!r}")
    return value


# Real providers switched on by their API key in the environment, with the models they add.
ENV_PROVIDERS: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    (
        "openai",
        "OPENAI_API_KEY",
        "openai",
        "https://api.openai.com/v1",
        ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1", "text-embedding-3-small"),
    ),
    (
        "anthropic",
        "ANTHROPIC_API_KEY",
        "anthropic",
        "https://api.anthropic.com",
        ("claude-haiku-4-5", "claude-sonnet-4-5"),
    ),
    (
        "openrouter",
        "OPENROUTER_API_KEY",
        "openai",
        "https://openrouter.ai/api/v1",
        ("deepseek/deepseek-chat", "openai/gpt-4o-mini", "anthropic/claude-haiku-4-5"),
    ),
    (
        "gemini",
        "GEMINI_API_KEY",
        "openai",
        "https://generativelanguage.googleapis.com/v1beta/openai",
        ("gemini-2.5-flash", "gemini-2.5-flash-lite"),
    ),
    ("deepseek", "DEEPSEEK_API_KEY", "openai", "https://api.deepseek.com/v1", ("deepseek-chat",)),
    (
        "together_ai",
        "TOGETHER_API_KEY",
        "openai",
        "https://api.together.xyz/v1",
        ("meta-llama/Llama-3.3-70B-Instruct-Turbo",),
    ),
)


def _replay_models() -> dict[str, dict[str, Any]]:
    from thrifty.providers.replay_records import GSM8K_MODELS, REPLAY_PRICES, ROUTERBENCH_MODELS

    windows = {
        "gpt-4-1106-preview": 128000,
        "gpt-3.5-turbo-1106": 16385,
        "claude-v2": 100000,
        "claude-v1": 100000,
        "claude-instant-v1": 100000,
        "mistralai/mixtral-8x7b-chat": 32768,
        "mistralai/Mixtral-8x7B-Instruct-v0.1": 32768,
        "zero-one-ai/Yi-34B-Chat": 4096,
        "meta/code-llama-instruct-34b-chat": 16384,
    }
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(ROUTERBENCH_MODELS + GSM8K_MODELS):
        inp, outp = REPLAY_PRICES[name]
        out[name] = {
            "provider": "replay",
            "input_cost_per_token": inp,
            "output_cost_per_token": outp,
            "context_window": windows.get(name, 4096),
            "max_output_tokens": 4096,
        }
        if name not in ROUTERBENCH_MODELS:
            # Recorded on GSM8K only: named, it answers those prompts; "auto" (any prompt) skips it.
            out[name]["route"] = False
    return out


OFFLINE_MODEL = "offline-echo"  # says it is an offline stand-in; answers any prompt
LOCAL_MODEL = "local-smollm2"  # SmolLM2-135M on llama.cpp, when the llm extra is installed


def _stand_ins(local: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Providers and models that answer what the replay models have no recording of."""
    providers: dict[str, Any] = {"offline": {"type": "offline"}}
    models: dict[str, Any] = {
        OFFLINE_MODEL: {
            "provider": "offline",
            "input_cost_per_token": 0.0,
            "output_cost_per_token": 0.0,
            "context_window": 1_000_000,
            "max_output_tokens": 4096,
            "route": False,  # never chosen by "auto": only named, or as the replay fallback
        }
    }
    if local:
        from thrifty.providers.local_llm import smollm2_gguf

        gguf = smollm2_gguf()
        if gguf is not None:
            providers["local"] = {"type": "llama", "model_path": str(gguf), "n_ctx": 2048}
            models[LOCAL_MODEL] = {
                "provider": "local",
                "input_cost_per_token": 0.0,
                "output_cost_per_token": 0.0,
                "context_window": 2048,
                "max_output_tokens": 1024,
                "route": False,
            }
    return providers, models


def default_document(
    env: Mapping[str, str] | None = None, *, local: bool = True
) -> dict[str, Any]:
    """The embedded default as a config document (the same shape a TOML file has).

    Replay models answer their recorded prompts; any other prompt falls back to the local model
    (``local=True`` and the ``llm`` extra installed) and then to ``offline-echo``, so every
    prompt gets an answer that says truthfully which model gave it.
    """
    env = os.environ if env is None else env
    stand_in_providers, stand_ins = _stand_ins(local)
    replay = _replay_models()
    for m in replay.values():
        m["fallbacks"] = list(stand_ins)[::-1]  # the local model first when there is one
    doc: dict[str, Any] = {
        "providers": {"replay": {"type": "replay", "source": "auto"}, **stand_in_providers},
        "models": {**replay, **stand_ins},
    }
    for name, key_env, ptype, base_url, models in ENV_PROVIDERS:
        if not env.get(key_env):
            continue
        doc["providers"][name] = {"type": ptype, "base_url": base_url, "api_key_env": key_env}
        for model in models:
            exposed = model if name in ("openai", "anthropic", "gemini") else f"{name}/{model}"
            doc["models"].setdefault(
                exposed,
                {
                    "deployments": [{"provider": name, "model": model}],
                    "mode": "embedding" if "embedding" in model else "chat",
                },
            )
    return doc


def _non_negative(value: float, key: str) -> float:
    if not value >= 0:
        raise UsageError(f"{key} must be >= 0, not {value!r}")
    return value


def _float(section: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{where}.{key} must be a number, not {value!r}")
    return float(value)


def _check_transport(name: str, p: Mapping[str, Any]) -> None:
    """providers.<name>.ca_file and .proxy are usable, or a UsageError now (not at a request)."""
    from thrifty.providers.http import parse_proxy, ssl_context

    if "ca_file" in p:
        ca = p["ca_file"]
        if not isinstance(ca, str) or not ca:
            raise UsageError(f"providers.{name}.ca_file must be a path (a PEM file or directory)")
        try:
            ssl_context(ca)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise UsageError(f"providers.{name}.ca_file {ca!r} cannot be loaded: {exc}") from None
    if "proxy" in p:
        proxy = p["proxy"]
        if proxy is False or proxy == "":
            return
        if not isinstance(proxy, str):
            raise UsageError(
                f"providers.{name}.proxy must be a proxy URL, or false for direct connections"
            )
        try:
            parse_proxy(proxy)
        except ValueError as exc:
            raise UsageError(f"providers.{name}.proxy: {exc}") from None


def build_config(
    doc: Mapping[str, Any], *, data_dir: Path | None = None, env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Validate a config document and price its models from the catalog."""
    env = os.environ if env is None else env
    ddir = Path(doc.get("data_dir") or data_dir or default_data_dir())
    catalog = Catalog.load(ddir)

    providers: dict[str, ProviderConfig] = {}
    for name, p in (doc.get("providers") or {}).items():
        ptype = p.get("type", "openai")
        if ptype not in PROVIDER_TYPES:
            raise UsageError(
                f"providers.{name}.type must be one of {', '.join(PROVIDER_TYPES)}, not {ptype!r}"
            )
        key = p.get("api_key") or (env.get(p["api_key_env"]) if p.get("api_key_env") else None)
        known = {"type", "base_url", "api_key", "api_key_env", "headers"}
        providers[name] = ProviderConfig(
            name=name,
            type=ptype,
            base_url=p.get("base_url"),
            api_key=key,
            headers=dict(p.get("headers") or {}),
            options={k: v for k, v in p.items() if k not in known},
        )
        if ptype not in LOCAL_TYPES and not providers[name].base_url:
            raise UsageError(f"providers.{name}.base_url is required for type {ptype!r}")
        _check_transport(name, p)

    models: dict[str, ModelConfig] = {}
    for name, m in (doc.get("models") or {}).items():
        m = dict(m)
        deps_doc = m.pop("deployments", None)
        if deps_doc is None:
            if "provider" not in m:
                raise UsageError(f"models.{name!r} needs a provider or deployments")
            deps_doc = [{"provider": m.pop("provider"), "model": m.pop("upstream_model", name)}]
        else:
            m.pop("provider", None)
        deployments = []
        facts = []  # per deployment: its own origin_country / regions, when the config says
        for d in deps_doc:
            if d.get("provider") not in providers:
                raise UsageError(f"models.{name!r}: unknown provider {d.get('provider')!r}")
            deployments.append(
                Deployment(d["provider"], d.get("model", name), float(d.get("weight", 1.0)))
            )
            facts.append({k: d[k] for k in DEPLOYMENT_FACTS if k in d})
        if not deployments:
            raise UsageError(f"models.{name!r} has no deployments")
        fallbacks = tuple(m.pop("fallbacks", ()))
        route = bool(m.pop("route", True))
        mode = m.pop("mode", "chat")
        hint = pop_hint(name, m)

        def info_of(dep: Deployment, own: dict[str, Any], *, _name: str = name, _m: dict = m) -> ModelInfo:
            ptype = providers[dep.provider].type
            return catalog.model(
                _name,
                ptype if ptype != "openai" else dep.provider,
                dep.model if dep.model != _name else None,
                overrides={**_m, **own},
            )

        info = info_of(deployments[0], facts[0])
        deployments = [
            Deployment(
                d.provider,
                d.model,
                d.weight,
                bool(info.openai_reasoning_params) and providers[d.provider].type == "openai",
                info if i == 0 else info_of(d, facts[i]),
            )
            for i, d in enumerate(deployments)
        ]
        models[name] = ModelConfig(
            info, tuple(deployments), fallbacks, route, mode, lacks_of(info), hint
        )
    for name, mc in models.items():
        for fb in mc.fallbacks:
            if fb not in models:
                raise UsageError(f"models.{name!r}: fallback {fb!r} is not a configured model")

    profiles = {}
    for name, p in (doc.get("profiles") or {}).items():
        profiles[name] = ProfileConfig(
            cost_weight=p.get("cost_weight"), target_quality=p.get("target_quality")
        )
    t, r, b = doc.get("timeouts", {}), doc.get("retry", {}), doc.get("circuit_breaker", {})
    d = Timeouts()
    cfg = GatewayConfig(
        data_dir=ddir,
        providers=providers,
        models=models,
        profiles=profiles,
        frontier_model=doc.get("frontier_model", "gpt-4-1106-preview"),
        default_profile=doc.get("default_profile", "auto"),
        router_path=doc.get("router_path") or env.get("THRIFTY_ROUTER"),
        router_reload_s=_non_negative(_float(doc, "router_reload_s", 2.0, "config"), "router_reload_s"),
        expected_output_tokens=int(doc.get("expected_output_tokens", 256)),
        max_body_bytes=_max_body_bytes(doc.get("max_body_bytes", 32 * 1024 * 1024)),
        timeouts=Timeouts(
            _float(t, "connect", d.connect, "timeouts"),
            _float(t, "first_token", d.first_token, "timeouts"),
            _float(t, "total", d.total, "timeouts"),
        ),
        retry=RetryPolicy(
            int(r.get("attempts", 2)),
            _float(r, "backoff_base", 0.2, "retry"),
            _float(r, "backoff_max", 4.0, "retry"),
            _non_negative(_float(r, "max_retry_after", 30.0, "retry"), "retry.max_retry_after"),
        ),
        breaker=BreakerPolicy(
            int(b.get("failures", 5)), _float(b, "cooldown", 30.0, "circuit_breaker")
        ),
        spend=dict(doc.get("spend") or {}),
        spend_enabled=bool(doc.get("spend_enabled", True)),
    )
    cfg.cache, cfg.batches = parse_settings(doc)
    cfg.cascade, cfg.affinity = parse_cascade(doc), parse_affinity(doc)
    cfg.routing, cfg.judge = parse_router(doc), parse_judge(doc, models)
    return cfg


def load_config(
    path: str | Path | None = None, *, env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Read a TOML config file, or build the embedded default when ``path`` is None."""
    if path is None:
        return build_config(default_document(env), env=env)
    litellm_hint = (
        f"YAML is LiteLLM's config format; thrifty's is TOML. Translate it with: "
        f"thrifty config import-litellm {path} > thrifty.toml"
    )
    if str(path).lower().endswith((".yaml", ".yml")):
        if not Path(path).is_file():
            raise UsageError(f"config file not found: {path}")
        raise UsageError(f"config file {path} is YAML. {litellm_hint}")
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        if b"model_list:" in Path(path).read_bytes():
            raise UsageError(f"config file {path} looks like a LiteLLM YAML config. {litellm_hint}") from None
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    if doc.get("data_dir") and not Path(doc["data_dir"]).is_absolute():
        doc["data_dir"] = str(Path(path).parent / doc["data_dir"])
    for p in (doc.get("providers") or {}).values():  # ca_file: relative to the config file too
        ca = p.get("ca_file") if isinstance(p, dict) else None
        if isinstance(ca, str) and ca and not Path(ca).is_absolute():
            p["ca_file"] = str(Path(path).parent / ca)
    return build_config(doc, env=env)
