"""The "next release" of the rolling-upgrade test (tests/chaos/test_rolling_upgrade.py), loaded
as a rule plugin (ENTITLED_RULE_PLUGINS). It changes two things, one of each kind that
docs/operations.md (Rolling upgrades) tells apart:

- a new projection column, `products.name_key` (the name folded to lower case, for a
  case-insensitive lookup), computed by Postgres from the record: one step, added by
  `entitled migrate` while the old workers run; their writes fill it too;
- a changed rule, product names stored upper-cased: what the shipped rule built differs
  until a replay rebuilds the tables from the log.
"""

from __future__ import annotations

from dataclasses import replace

from projections import schema
from projections.model.events import StripeEvent
from projections.model.rows import ProductRow
from projections.model.rules import fold
from projections.model.rules.products import product_snapshot

NAME_KEY = "name_key"
schema.add_column("products", NAME_KEY, "text GENERATED ALWAYS AS (lower(record->>'name')) STORED")


@fold("product.created", "product.updated", "product.deleted", table="products", override=True)
def product_upper(event: StripeEvent, current: ProductRow | None) -> ProductRow:
    row = product_snapshot(event, current)
    return replace(row, name=row.name.upper() if row.name else row.name)
