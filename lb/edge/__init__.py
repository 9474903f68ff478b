"""Edge security and client fairness: who may come in, and how much one client may take.

Each policy is a module (basic_auth, jwt_auth, forward_auth, ...) of the `Policy` protocol of
chain.py, which composes a route's policies into its `Route.guard`; install.py builds them
from the config on every reload; metrics.py declares their counters.
"""
