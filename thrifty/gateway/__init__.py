"""The OpenAI- and Anthropic-compatible gateway: routes, streams, retries, falls back, and
calls spend control on every request.

Modules: ``config`` (TOML and the embedded default), ``app`` (the raw ASGI app and
``create_app``), ``service`` (the request pipeline), ``schemas`` (request validation),
``errors`` (API-format errors), ``routing`` (the learned router for ``auto``),
``reliability`` (breakers, backoff, load balancing), ``metrics`` (Prometheus),
``server`` / ``commands`` (``thrifty serve``), ``demo`` (``thrifty demo``), ``testing``
(run an app on loopback in tests).
"""
