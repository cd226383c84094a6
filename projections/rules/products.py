"""product.* and price.*: the catalogue side; a product's metadata names what it sells."""

from __future__ import annotations

from projections.events import PriceView, ProductView, StripeEvent
from projections.rows import PriceRow, ProductRow
from projections.rules._registry import fold, stamp_of, view


@fold("product.created", "product.updated", "product.deleted", table="products")
def product_snapshot(event: StripeEvent, current: ProductRow | None) -> ProductRow:
    p = view(event, ProductView)
    return ProductRow(
        id=p.id,
        name=p.name,
        active=p.active,
        # product.deleted carries the product as it was, without `deleted: true`
        deleted=p.deleted or event.type == "product.deleted",
        metadata=p.metadata,
        stamp=stamp_of(event),
        event_id=event.id,
    )


@fold("price.created", "price.updated", "price.deleted", table="prices")
def price_snapshot(event: StripeEvent, current: PriceRow | None) -> PriceRow:
    p = view(event, PriceView)
    return PriceRow(
        id=p.id,
        product=p.product,
        active=p.active,
        deleted=p.deleted or event.type == "price.deleted",
        stamp=stamp_of(event),
        event_id=event.id,
    )
