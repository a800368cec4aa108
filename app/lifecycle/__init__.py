"""The process's life: phases, the supervisor (it builds the engine, then the
pipeline with the builder app.main gives it, and never sees the ledger or
admission policy), in-flight requests, the watchdog, the server and the
checks made before anything heavy starts."""
