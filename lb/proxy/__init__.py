"""The data path: client connections, exchanges, backend connections and their pool.

timer, headers, upstream, exchange and downstream are compiled by Cython when lb is built
(see `lb.compiled`); the same .py files run as they are otherwise.
"""
