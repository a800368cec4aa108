"""Tenants: who is calling, their priority and share, their budgets (shared by
a fleet through Redis), and the record of what each request used."""
