"""`entitled hydrate`: complete logged events that lack what the fold needs, with its metrics
and status."""
