"""Edge policies: who may come in (IP lists, client certificates, credentials) and how much
one client may take (connections, requests in flight), compiled into `Route.guard` and the
listeners' accept path."""
