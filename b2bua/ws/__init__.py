"""WebSocket signalling: JSON-RPC 2.0 framing (:mod:`.jsonrpc`), rate limiting (:mod:`.ratelimit`),
the autobahn protocol (:mod:`.protocol`) and its factory (:mod:`.factory`).

This package only frames and parses; what a request means is decided in :mod:`b2bua.call`.
"""
