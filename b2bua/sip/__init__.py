"""SIP state machines (pjsip layering): transaction → dialog → usages (INVITE session, registration).

Time is injected (``IReactorTime``); no module here does I/O of its own — messages leave
through a transport object given to them and arrive through ``message_received`` calls.
"""
