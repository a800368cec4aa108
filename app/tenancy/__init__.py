"""Tenants: who is calling (keys, plain or from the tenants file, and their
one digest), their priority and share, their budgets (QuotaStore: this
process, or Redis for a fleet), and the ledger of what each request used."""
