"""The pure model: typed views of Stripe events, older shapes upcast to the current one, the
mirrored rows and their order, the fold rules, the batch fold, and the entitlement derivation.

Nothing here does I/O: no psycopg, aiokafka, faust, starlette or httpx (enforced by
tests/test_boundaries.py), so every rule is testable on plain data.
"""
