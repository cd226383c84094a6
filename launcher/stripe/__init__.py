"""Signed Stripe events built from Stripe's own example objects, for tests, the demo and benches."""
