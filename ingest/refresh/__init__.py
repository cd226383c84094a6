"""Refresh on demand: read objects from the Stripe API now and log them as snapshots; the
`POST /v1/refresh` route the read API mounts."""
