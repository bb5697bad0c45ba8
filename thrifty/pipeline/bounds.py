"""Upper bounds of the prompt tokens an upstream can bill, for budget holds.

A hold must never be less than what the upstream can charge, whatever fields a request
carries (messages, tools, legacy ``functions``, a ``response_format`` schema, tool results,
stop sequences, metadata, fields thrifty has never heard of). So the bound is not a sum over
fields someone remembered: it is the size of the JSON body that goes upstream, in bytes.

Why bytes are a safe bound: every token the provider bills for text comes from a string in
that body, JSON encodes a string in at least as many bytes as its UTF-8 form (escapes only
lengthen it), and a token of a byte-level BPE (OpenAI, Anthropic, Llama, Qwen, DeepSeek) or of
a SentencePiece vocabulary with byte fallback covers at least one byte. Keys, quotes and
brackets are counted too, which only makes the bound looser. What bytes do not cover is
added on top: chat-template framing (special tokens per message, the tool-use system prompt
a provider injects) and images, which are billed by pixels, not by the bytes of their URL;
each provider documents a maximum per image (:func:`image_tokens_max`). Parts whose billed
size is not knowable from the request (a ``file`` part, e.g. a PDF whose pages are billed as
text plus images) are bounded by the model's context window, the most a provider can bill.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from functools import lru_cache

from thrifty.catalog.model import ModelInfo

# Framing not in the body: per message (role and separator tokens) and per request.
MESSAGE_FRAMING = 8
REQUEST_FRAMING = 64
# Tool use: Anthropic injects a tool-use system prompt of up to 346 tokens (Claude 4 family,
# tool_choice auto/none), OpenAI renders each definition in its own template.
TOOLS_FRAMING = 512
TOOL_FRAMING = 16
# A model with no known context window: the largest any provider documents (2M, Gemini).
UNKNOWN_CONTEXT = 2_000_000

# Documented maxima per image, first matching pattern wins (the model's own name, after any
# "vendor/" prefix). OpenAI tile models: an image is fitted in 2048x2048, then its short side
# scaled to 768, so at most 2x4 tiles of 512 px: base + 8 x tile. OpenAI patch models: at most
# 1536 patches of 32 px, times the model's multiplier (2.46 the largest). Anthropic: images are
# resized to at most ~1.15 megapixels, about (w x h) / 750 = 1,600 tokens.
_IMAGE_RULES: tuple[tuple[str, int], ...] = (
    ("gpt-4o-mini*", 2833 + 8 * 5667),  # 48,169: priced so that an image costs what gpt-4o's does
    ("gpt-4.1-nano*", 3779),  # 1536 x 2.46
    ("gpt-5-nano*", 3779),
    ("gpt-4.1-mini*", 2489),  # 1536 x 1.62
    ("gpt-5-mini*", 2489),
    ("o4-mini*", 2642),  # 1536 x 1.72
    ("gpt-4o*", 85 + 8 * 170),
    ("chatgpt-4o*", 85 + 8 * 170),
    ("gpt-4.1*", 85 + 8 * 170),
    ("gpt-4.5*", 85 + 8 * 170),
    ("o1*", 75 + 8 * 150),
    ("o3*", 75 + 8 * 150),
    ("gpt-5*", 70 + 8 * 140),
    ("claude*", 1600),
)
# No documented rule for the model: the largest rule known, so the bound stays a bound.
IMAGE_TOKENS_UNKNOWN = max(tokens for _, tokens in _IMAGE_RULES)


@lru_cache(maxsize=1024)
def _image_rule(name: str, provider: str) -> int:
    base = name.rsplit("/", 1)[-1].lower()
    for pattern, tokens in _IMAGE_RULES:
        if fnmatchcase(base, pattern):
            return tokens
    if provider == "anthropic":
        return 1600
    return IMAGE_TOKENS_UNKNOWN


def image_tokens_max(info: ModelInfo) -> int:
    """The most one image part can be billed as, in prompt tokens, on ``info``'s model."""
    return _image_rule(info.upstream_model or info.name, info.provider.lower())


def prompt_tokens_max(
    info: ModelInfo,
    body_bytes: int,
    *,
    messages: int = 1,
    images: int = 0,
    tools: int = 0,
    opaque: bool = False,
) -> int:
    """An upper bound of the prompt tokens ``info``'s upstream can bill for a request whose
    body is ``body_bytes`` long (see the module docstring for why)."""
    if opaque:
        return max(info.context_window or UNKNOWN_CONTEXT, body_bytes)
    bound = body_bytes + MESSAGE_FRAMING * messages + REQUEST_FRAMING
    if tools:
        bound += TOOLS_FRAMING + TOOL_FRAMING * tools
    if images:
        bound += images * image_tokens_max(info)
    return bound
