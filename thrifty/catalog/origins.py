"""Developer country of origin and hosting regions, by provider and model family.

LiteLLM's price map says who *serves* a model, not who *made* it, and policy
(e.g. "no models developed in CN") needs the latter, so thrifty keeps this small
table. Keys are matched as lowercase substrings of the model name (most specific
first; ``^`` anchors at the start of the name), then by provider.
"""

from __future__ import annotations

# (substring of the model name, developer, ISO 3166 alpha-2 country of the developer)
MODEL_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("gpt-", "OpenAI", "US"),
    ("^o1", "OpenAI", "US"),
    ("^o3", "OpenAI", "US"),
    ("^o4", "OpenAI", "US"),
    ("text-embedding", "OpenAI", "US"),
    ("claude", "Anthropic", "US"),
    ("gemini", "Google", "US"),
    ("gemma", "Google", "US"),
    ("llama", "Meta", "US"),
    ("wizardlm", "Microsoft", "US"),
    ("phi-", "Microsoft", "US"),
    ("grok", "xAI", "US"),
    ("command", "Cohere", "CA"),
    ("mixtral", "Mistral AI", "FR"),
    ("mistral", "Mistral AI", "FR"),
    ("codestral", "Mistral AI", "FR"),
    ("magistral", "Mistral AI", "FR"),
    ("deepseek", "DeepSeek", "CN"),
    ("glm", "Zhipu AI", "CN"),
    ("kimi", "Moonshot AI", "CN"),
    ("moonshot", "Moonshot AI", "CN"),
    ("qwen", "Alibaba (Qwen)", "CN"),
    ("qwq", "Alibaba (Qwen)", "CN"),
    ("yi-", "01.AI", "CN"),
    ("minimax", "MiniMax", "CN"),
    ("smollm", "Hugging Face", "US"),
)

# Provider -> (developer country when the model family is unknown, hosting regions)
PROVIDERS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "openai": ("US", ("us",)),
    "anthropic": ("US", ("us",)),
    "gemini": ("US", ("us",)),
    "mistral": ("FR", ("eu",)),
    "deepseek": ("CN", ("cn",)),
    "moonshot": ("CN", ("cn",)),
    "zai": ("CN", ("cn",)),
    "dashscope": ("CN", ("cn",)),
    "together_ai": (None, ("us",)),
    "openrouter": (None, ("us",)),
    "fireworks_ai": (None, ("us",)),
    "groq": (None, ("us",)),
    "replay": (None, ("local",)),
    "offline": (None, ("local",)),
    "llama": (None, ("local",)),
    "fake": (None, ("local",)),
    "ollama": (None, ("local",)),
}


def origin_of(model: str, provider: str | None = None) -> str | None:
    """The developer's country for ``model`` (e.g. "US", "FR", "CN"), or None if unknown."""
    name = model.lower().rsplit("/", 1)[-1] if "/" in model else model.lower()
    full = model.lower()
    for needle, _dev, country in MODEL_FAMILIES:
        if needle.startswith("^"):
            if name.startswith(needle[1:]):
                return country
        elif needle in full:
            return country
    return PROVIDERS.get(provider or "", (None, ()))[0]


def regions_of(provider: str | None) -> tuple[str, ...]:
    return PROVIDERS.get(provider or "", (None, ()))[1]
