"""`entitled backfill` and `entitled reconcile`: list the Stripe API into the log."""
