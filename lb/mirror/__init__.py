"""Request mirroring per route (`routes[].mirror`): a share of the requests copied to a
shadow service, fire and forget. install.py wires it in."""
