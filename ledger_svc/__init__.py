"""ledger_svc: durable, idempotent cost accounting of every provider attempt (SQLite or PostgreSQL).

The client side, `ledger_client` (`LedgerReporter`: the router's durable delivery of usage records),
is a package of its own: whoever only talks to the ledger imports that, never this package.
"""
