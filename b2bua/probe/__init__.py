"""The operator's probe: ``python -m b2bua.probe`` (or ``mpb2bua-probe``) checks a running gateway
end to end. :mod:`.cli` runs the steps, :mod:`.rpc` is the WebSocket JSON-RPC client and
:mod:`.tone` finds the tone in what came back (standard library only)."""
