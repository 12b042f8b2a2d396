"""Call control: the only package that joins the WebSocket side (:mod:`b2bua.ws`) with SIP.

:mod:`.interfaces` names what it needs from the others, :mod:`.session` holds one logged-in user,
:mod:`.registry` indexes sessions and :mod:`.controller` implements the JSON-RPC methods.
"""
