"""Spend control: keys, teams, budgets, rate limits, policies and the ledger."""

from thrifty.spend.api import (
    AuthError,
    BudgetExceeded,
    LedgerRecord,
    OpenSpendControl,
    PermissionDenied,
    PolicyDenied,
    Principal,
    RateLimited,
    Reservation,
    SpendControl,
    SpendError,
)

__all__ = [
    "AuthError",
    "BudgetExceeded",
    "LedgerRecord",
    "OpenSpendControl",
    "PermissionDenied",
    "PolicyDenied",
    "Principal",
    "RateLimited",
    "Reservation",
    "SpendControl",
    "SpendError",
]
