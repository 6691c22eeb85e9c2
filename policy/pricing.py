"""What tokens cost, from the ruleset's ``price`` declarations.

A gateway that knows the cost of a call sends ``cost_usd`` and the table is not consulted.
One that sends only tokens (Envoy, most proxies) gets its cost from here: reports are
priced with the model that served, estimates with the model a decision routes to.
"""

from __future__ import annotations

from tollway.dsl.prices import PriceTable

__all__ = ["token_cost"]


def token_cost(
    prices: PriceTable,
    model: str,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int = 0,
) -> float | None:
    """USD for these tokens of ``model``, or None when no price covers the model.

    ``cached_input_tokens`` are part of ``input_tokens`` (as in OpenAI's usage block) and
    cost the ``cached_input`` price when the declaration has one, the ``input`` price
    otherwise.
    """
    price = prices.lookup(model)
    if price is None:
        return None
    cached = min(cached_input_tokens, input_tokens)
    cached_rate = price.input if price.cached_input is None else price.cached_input
    usd = (
        (input_tokens - cached) * price.input + cached * cached_rate + output_tokens * price.output
    )
    return usd / price.per
