"""mpb2bua: a Twisted gateway between mini-program clients (WebSocket + RTMP) and SIP PBXs."""

__version__ = "0.1.0"
