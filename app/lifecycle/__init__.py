"""The process's life: phases, the supervisor, in-flight requests, the
watchdog, the server and the checks made before anything heavy starts."""
