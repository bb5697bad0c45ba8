"""Exact money: every amount spend control sums is an integer of nano-dollars.

Floats cannot hold most decimal prices exactly and their sums drift, so the
ledger, the budgets and the reservations count integer nano-dollars (1e-9 USD)
and convert at the edges. Converting a float goes through its shortest
``repr``, so ``0.000123`` becomes exactly 123_000 nano-dollars.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal

NANOS_PER_USD = 1_000_000_000
NANO = Decimal("0.000000001")


def to_decimal(amount: float | str | Decimal) -> Decimal:
    """A USD amount as the Decimal its text says (floats via their shortest repr)."""
    if isinstance(amount, Decimal):
        return amount
    if isinstance(amount, float):
        return Decimal(repr(amount))
    return Decimal(amount)


# Below this many USD, distinct nano-dollar amounts are distinct floats (a float's spacing there
# is under 2**-31 USD), which the exact shortcut in usd_to_nanos relies on.
_FLOAT_EXACT_BELOW = 4_000_000.0


def usd_to_nanos(amount: float | str | Decimal, *, round_up: bool = False) -> int:
    """USD to integer nano-dollars; ``round_up`` for amounts held against a budget."""
    if type(amount) is float and -_FLOAT_EXACT_BELOW < amount < _FLOAT_EXACT_BELOW:
        # The usual amount (a price already rounded to the nano) without Decimal: if ``amount`` is
        # the float nearest some n nano-dollars, its shortest repr is exactly n nano-dollars, so
        # n is the answer whatever the rounding (the same as the Decimal path below, tested).
        nanos = round(amount * NANOS_PER_USD)
        if nanos / NANOS_PER_USD == amount:
            return nanos
    value = to_decimal(amount)
    if not value.is_finite():
        raise ValueError(f"not a finite amount: {amount!r}")
    rounding = ROUND_CEILING if round_up else ROUND_HALF_EVEN
    return int((value * NANOS_PER_USD).to_integral_value(rounding=rounding))


def nanos_to_usd(nanos: int) -> Decimal:
    """Integer nano-dollars as an exact Decimal of USD."""
    return (Decimal(nanos) / NANOS_PER_USD).quantize(NANO)


def format_usd(nanos: int) -> str:
    """A human amount, e.g. ``$12.50`` or ``$0.000042`` (no precision hidden below a cent)."""
    usd = nanos_to_usd(nanos).normalize()
    if usd == usd.quantize(Decimal("0.01")):
        return f"${usd:.2f}"
    return f"${usd:f}"
