"""thrifty: an open LLM cost-control gateway.

Areas, one package each: ``catalog`` (models and prices), ``router`` (learned
cost/quality routing), ``gateway`` (the ASGI app), ``providers`` (upstream
adapters), ``spend`` (keys, budgets, policies, ledger), ``cli``.
"""

__version__ = "0.1.0"
