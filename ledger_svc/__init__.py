"""ledger_svc: durable, idempotent cost accounting of every provider attempt (SQLite or PostgreSQL).

`ledger_svc.client.LedgerReporter` is what the router imports; it depends on nothing else in this
package, so the router's image ships only `__init__.py` and `client.py`.
"""
