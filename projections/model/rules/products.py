"""product.* and price.*: the catalogue side; a product's metadata names what it sells."""

from __future__ import annotations

from projections.model.events import StripeEvent
from projections.model.rows import PriceRow, ProductRow
from projections.model.rules._registry import fold, row_of, view
from projections.model.views import PriceView, ProductView


@fold("product.created", "product.updated", "product.deleted", table="products")
def product_snapshot(event: StripeEvent, current: ProductRow | None) -> ProductRow:
    p = view(event, ProductView)
    # product.deleted carries the product as it was, without `deleted: true`
    return row_of(ProductRow, p, event, deleted=p.deleted or event.type == "product.deleted")


@fold("price.created", "price.updated", "price.deleted", table="prices")
def price_snapshot(event: StripeEvent, current: PriceRow | None) -> PriceRow:
    p = view(event, PriceView)
    return row_of(PriceRow, p, event, deleted=p.deleted or event.type == "price.deleted")
