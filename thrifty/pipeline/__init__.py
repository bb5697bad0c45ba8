"""One request's path, free of HTTP: a parsed ``Call`` is planned (routing, policy,
capabilities), admitted (rate limits, a budget hold), called upstream (retries, breakers,
fallbacks), billed once and settled, with the caches, cascade, deferral and judge as stages.
docs/architecture.md walks through it with file names.
"""
