"""The anchoring worker's fee policy: what it may offer per gas, and spend per hour.

Pure arithmetic on numbers the worker read from the chain and its own fee records, so the
policy is one place to read and to test.  Why two caps: a cap per gas alone still lets a
worker that anchors often burn any amount per day; a spend cap alone lets one transaction in a
fee spike take the whole budget.  Above either cap the worker sends nothing and says why; its
checkpoints keep being recorded, and when fees fall it anchors the latest one, which covers
every window since the last anchor (one transaction for the whole backlog).
"""

from __future__ import annotations

from dataclasses import dataclass

from vitalchain.anchor.chain import BASE_FEE_MULTIPLIER, Fees

GWEI = 10**9
ETH = 10**18


@dataclass(frozen=True)
class FeeCaps:
    max_fee_per_gas: int  # wei
    max_spend_per_hour: int  # wei

    @classmethod
    def from_settings(cls, max_fee_gwei: float, max_spend_eth_per_hour: float) -> FeeCaps:
        return cls(int(max_fee_gwei * GWEI), int(max_spend_eth_per_hour * ETH))


@dataclass(frozen=True)
class FeeDecision:
    fees: Fees | None  # None: wait
    reason: str | None = None  # why it waits (for the progress line and `anchor status`)


def gwei(wei: int) -> str:
    return f"{wei / GWEI:.3f} gwei"


def eth(wei: int) -> str:
    return f"{wei / ETH:.6f} ETH"


def decide(base_fee: int, tip: int, gas: int, caps: FeeCaps, spent_last_hour: int,
           floor: Fees | None = None) -> FeeDecision:
    """Fees for the next transaction, or why to wait.

    The max fee is ``2 x base + tip`` (survives a few blocks of base fee growth) but never above
    the cap; the transaction is sent only if it can be mined now, i.e. ``base + tip <= cap``.
    ``floor`` is the open transaction being replaced (a replacement must beat it by 25%).  The
    spend check counts the worst case, ``gas x max fee``, against what the last hour paid.
    """
    cap = caps.max_fee_per_gas
    if base_fee + tip > cap:
        return FeeDecision(None, f"fees above cap: base fee {gwei(base_fee)} + tip {gwei(tip)} "
                                 f"> max {gwei(cap)} (VITALCHAIN_ANCHOR_MAX_FEE_GWEI)")
    fees = Fees(max_fee=min(BASE_FEE_MULTIPLIER * base_fee + tip, cap), priority_fee=tip)
    if floor is not None:
        fees = floor.bumped(fees)
        if fees.max_fee > cap:
            return FeeDecision(None, f"fees above cap: replacing the open transaction needs max "
                                     f"fee {gwei(fees.max_fee)} > max {gwei(cap)} "
                                     "(VITALCHAIN_ANCHOR_MAX_FEE_GWEI)")
    worst = gas * fees.max_fee
    if spent_last_hour + worst > caps.max_spend_per_hour:
        return FeeDecision(None, f"spend cap: {eth(spent_last_hour)} paid in the last hour, the "
                                 f"next transaction may cost up to {eth(worst)}, cap "
                                 f"{eth(caps.max_spend_per_hour)} per hour "
                                 "(VITALCHAIN_ANCHOR_MAX_SPEND_ETH_PER_HOUR)")
    return FeeDecision(fees)
