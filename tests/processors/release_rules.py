"""The "next release" of the rolling-upgrade test (tests/chaos/test_rolling_upgrade.py), loaded
as a rule plugin (ENTITLED_RULE_PLUGINS): product names are stored upper-cased. A changed
rule: what the shipped rule built differs until a replay rebuilds the tables from the log."""

from __future__ import annotations

from dataclasses import replace

from projections.model.events import StripeEvent
from projections.model.rows import ProductRow
from projections.model.rules import fold
from projections.model.rules.products import product_snapshot


@fold("product.created", "product.updated", "product.deleted", table="products", override=True)
def product_upper(event: StripeEvent, current: ProductRow | None) -> ProductRow:
    row = product_snapshot(event, current)
    return replace(row, name=row.name.upper() if row.name else row.name)
