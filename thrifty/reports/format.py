"""One rule for money on every surface (terminal report, CLI tables, dashboard, demo).

An amount of a cent or more shows to the cent; a smaller one shows three significant digits
(``$0.00824``), never rounded to ``$0.00``. A column shows all its amounts with the same number
of decimals, the number its smallest non-zero amount needs, so ``$0.02`` never sits above
``$0.008240``. Exact amounts are in JSON and CSV, not here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MAX_DECIMALS = 9  # nano-dollars: the ledger's unit


def decimals_for(usd: float) -> int:
    """Decimals that show ``usd`` to the cent, or to three significant digits below a cent."""
    a = abs(usd)
    if a == 0 or a >= 0.01:
        return 2
    return min(MAX_DECIMALS, 2 - math.floor(math.log10(a)))  # 0.00824 -> 5


def usd(amount: float, decimals: int | None = None) -> str:
    """``$1,234.50``, ``$0.00824``, ``-$0.10``."""
    d = decimals_for(amount) if decimals is None else decimals
    text = f"${abs(amount):,.{d}f}"
    return "-" + text if amount < 0 and float(f"{abs(amount):.{d}f}") else text


def usd_nanos(nanos: int, decimals: int | None = None) -> str:
    return usd(nanos / 1e9, decimals)


def money(amounts: Sequence[float]) -> list[str]:
    """A column of USD amounts, all with the decimals its smallest non-zero amount needs."""
    d = max((decimals_for(a) for a in amounts if a), default=2)
    return [usd(a, d) for a in amounts]


def money_nanos(amounts: Sequence[int]) -> list[str]:
    return money([a / 1e9 for a in amounts])


def per_day(nanos_per_day: float) -> str:
    """A daily rate, never ``$0.00/day`` for a rate that is not zero."""
    return f"{usd(nanos_per_day / 1e9)}/day"


def pct(share: float | None, decimals: int = 0) -> str:
    """A share in [0, 1] as a percentage; one precision per surface (0 by default)."""
    return "-" if share is None else f"{share * 100:.{decimals}f}%"
