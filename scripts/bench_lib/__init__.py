"""Capacity and speed benchmark of the B2BUA, run by ``scripts/bench``.

Not imported by the product. Everything runs in network namespaces that the
benchmark creates (addresses in 10.99.0.0/16) and is stopped by pid.
"""
