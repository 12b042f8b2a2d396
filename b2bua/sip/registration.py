"""The REGISTER client usage (RFC 3261 §10): one per logged-in user.

It keeps one binding alive: answers digest challenges, refreshes at about half
the granted expiry (jittered, so thousands of users do not refresh together),
honours 423 Min-Expires, retries with backoff after timeouts and 5xx, and
un-registers on stop. Time comes from the stack's reactor, so tests drive it with
``task.Clock``.

A stock FreeSWITCH keeps one binding per user and drops it on any ``Expires: 0``
whichever Contact it names. So a 2xx counts only when it lists our Contact, and
:meth:`Registration.stop` first asks the registrar for the user's bindings (a
REGISTER without Contact, RFC 3261 §10.2.3) and un-registers only when ours is
still among them: another node or device that took the binding keeps it.
"""

from __future__ import annotations

import random
import secrets
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from b2bua.wire.digest import Challenge, DigestClient, DigestError
from b2bua.wire.sip import Response
from b2bua.wire.sipuri import NameAddr, UriError

if TYPE_CHECKING:
    from b2bua.sip.ua import SipStack

log = Logger()

MIN_REFRESH = 1.0
RETRY_BASE = 2.0
RETRY_MAX = 300.0
STOP_TIMEOUT = 8.0
MAX_EXPIRES = 86400


class RegistrationListener(Protocol):
    def registered(self, expires: int) -> None: ...  # first 2xx, and whenever the expiry changes
    def registration_failed(
        self, reason: str, sip_status: int | None, retrying: bool, detail: str = ""
    ) -> None: ...
    def unregistered(self) -> None: ...


# one generator for every registration's CSeq and refresh jitter (nothing secret is drawn from
# it): a Random() each would cost 2.5 KB of Mersenne-Twister state per idle user
_RNG = random.Random()


class Registration:
    """A binding of ``contact`` to the user's AOR at the registrar."""

    def __init__(
        self,
        stack: SipStack,
        user: str,
        digest: DigestClient,
        contact_user: str,
        listener: RegistrationListener,
        expires: int,
        rng: random.Random | None = None,
    ) -> None:
        self.stack = stack
        self.user = user
        self.digest = digest
        self.contact_user = contact_user
        self.listener = listener
        self.expires = expires
        self.granted = 0
        self.state = "idle"
        self.call_id = f"{secrets.token_hex(12)}@mpb2bua"
        self.from_tag = secrets.token_hex(6)
        self._rng = rng or _RNG
        self.cseq = self._rng.randint(1, 10000)
        self._challenge: Challenge | None = None
        self._proxy = False  # the cached challenge came in a 407
        self._auth_fresh = False  # credentials in flight answer a challenge of this very attempt
        self._timer = None
        self._txn = None
        self._failures = 0
        self._stopped: Deferred | None = None
        self._stop_guard = None
        self._querying = False  # stop(): the bindings query is in flight, not yet the un-REGISTER

    # -- public ------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.state != "idle":
            return
        self.state = "registering"
        self._send()

    def stop(self) -> Deferred:
        """Un-register; the Deferred fires (never errbacks) when done or after STOP_TIMEOUT."""
        if self._stopped is not None:
            return self._stopped
        self._stopped = Deferred()
        self._cancel_timer()
        was = self.state
        in_flight = self._txn is not None
        if self._txn is not None:
            self._txn.terminate()
            self._txn = None
        # un-REGISTER only if a binding may exist: granted once, or a REGISTER is in flight;
        # and only once the registrar confirms the binding is still ours
        if was == "registered" or (was == "registering" and (in_flight or self.granted)):
            self.state = "unregistering"
            self._auth_fresh = False
            self._querying = True
            self._stop_guard = self.stack.reactor.callLater(STOP_TIMEOUT, self._finish_stop)
            self._send(query=True)
        else:
            self._finish_stop()
        return self._stopped

    def set_credentials(self, password: str | None, ha1: str | None) -> None:
        """Answer challenges with these credentials from the next REGISTER on."""
        self.digest = DigestClient(self.user, password=password, ha1=ha1)

    def refresh_soon(self, delay: float) -> None:
        """Send the next REGISTER after ``delay`` seconds instead of when it was due: the PBX came
        back and may have lost its bindings. Nothing happens to a registration that is stopping,
        failed for good or has a REGISTER in flight."""
        if self.state not in ("registered", "registering") or self._txn is not None:
            return
        self._failures = 0
        self._schedule(max(0.0, delay), self._refresh)

    # -- sending -----------------------------------------------------------------------------------------
    def _send(self, expires: int | None = None, query: bool = False) -> None:
        """A REGISTER: refresh (default), un-REGISTER (``expires=0``) or bindings query
        (``query``: no Contact, no Expires)."""
        stack = self.stack
        self.cseq += 1
        if expires is None:
            expires = self.expires
        request = stack.new_request(
            "REGISTER",
            stack.registrar_uri,
            from_uri=stack.aor(self.user),
            from_tag=self.from_tag,
            to_uri=stack.aor(self.user),
            call_id=self.call_id,
            cseq=self.cseq,
        )
        if not query:
            request.headers.add("Contact", f"<{stack.contact_uri(self.contact_user)}>")
            request.headers.add("Expires", expires)
        if self._challenge is not None:
            try:
                value = self.digest.authorization(self._challenge, "REGISTER", stack.registrar_uri)
            except DigestError as e:
                self._fail("auth_failed", None, retrying=False, detail=str(e))
                return
            request.headers.add("Proxy-Authorization" if self._proxy else "Authorization", value)
        self._txn = stack.send_request(request, self._on_response)

    def _on_response(self, response: Response) -> None:
        if response.status < 200:
            return
        self._txn = None
        status = response.status
        if status in (401, 407):
            self._on_challenge(response)
            return
        if self.state == "unregistering":
            self._on_stop_response(response)
            return
        if self.state not in ("registering", "registered"):
            return
        if 200 <= status < 300:
            self._on_registered(response)
        elif status == 423:
            self._on_interval_too_brief(response)
        elif status == 403:
            self._fail("auth_failed", status, retrying=False)
        elif status == 404:
            self._fail("not_found", status, retrying=False)
        elif response.local:
            self._fail("pbx_unreachable", None, retrying=True, detail=response.reason)
        elif status in (408, 480) or 500 <= status < 600:
            self._fail("pbx_error", status, retrying=True, retry_after=_retry_after(response))
        else:
            self._fail("pbx_error", status, retrying=False)

    def _on_challenge(self, response: Response) -> None:
        name = "Proxy-Authenticate" if response.status == 407 else "WWW-Authenticate"
        try:
            challenge = self.digest.choose(response.headers.get_all(name))
        except DigestError as e:
            self._after_auth_error("pbx_error", response.status, str(e))
            return
        if self._auth_fresh and not challenge.stale:
            # our answer to a challenge of this attempt was refused: wrong credentials
            self._after_auth_error("auth_failed", response.status, "credentials refused")
            return
        self._challenge = challenge
        self._proxy = response.status == 407
        self._auth_fresh = True
        if self.state == "unregistering":
            self._send(expires=0, query=self._querying)
        else:
            self._send()

    def _on_stop_response(self, response: Response) -> None:
        if not self._querying:
            self._finish_stop()  # the answer to our Expires: 0
            return
        self._querying = False
        ours = 200 <= response.status < 300 and _granted_expires(
            response, self.stack.contact_uri(self.contact_user)
        ) is not None
        if not ours:
            # Another device or node holds the user's binding now (or the registrar would not
            # say): an Expires: 0 would delete theirs on a single-binding registrar.
            log.info(
                "un-REGISTER of {user} skipped: the registrar does not list our Contact ({status})",
                user=self.user,
                status=response.status,
            )
            self._finish_stop()
            return
        self._auth_fresh = False
        self._send(expires=0)

    def _after_auth_error(self, reason: str, status: int, detail: str) -> None:
        if self.state == "unregistering":
            self._finish_stop()
        else:
            self._fail(reason, status, retrying=False, detail=detail)

    def _on_registered(self, response: Response) -> None:
        granted = _granted_expires(response, self.stack.contact_uri(self.contact_user), self.expires)
        if granted is None:
            # a 2xx that does not list our Contact: the registrar did not bind us (RFC 3261
            # §10.2.4 says it lists every current binding); reported, never taken as registered
            self._fail("not_bound", response.status, retrying=True, detail="our Contact is not listed")
            return
        first = self.state != "registered"
        changed = granted != self.granted
        self.state = "registered"
        self.granted = granted
        self._failures = 0
        self._auth_fresh = False
        # Refresh at about half the granted time. Users log in in crowds (a shift starts, a node
        # restarts and every phone comes back): the first refresh is drawn from a wide window,
        # 20–60 % of the granted time, so the crowd's refreshes spread out instead of coming
        # back as one wave every half-expiry; later ones keep ±5 % around the half.
        low, high = (0.2, 0.6) if first else (0.45, 0.55)
        delay = max(MIN_REFRESH, granted * self._rng.uniform(low, high))
        self._schedule(delay, self._refresh)
        if first or changed:
            self.listener.registered(granted)

    def _refresh(self) -> None:
        self._timer = None
        self._auth_fresh = False
        self._send()

    def _on_interval_too_brief(self, response: Response) -> None:
        text = (response.headers.get("Min-Expires") or "").strip()
        if not text.isdigit() or not self.expires < int(text) <= MAX_EXPIRES:
            self._fail("pbx_error", 423, retrying=False, detail="unusable Min-Expires")
            return
        self.expires = int(text)
        self._auth_fresh = False
        self._send()

    def _fail(
        self,
        reason: str,
        status: int | None,
        retrying: bool,
        detail: str = "",
        retry_after: float | None = None,
    ) -> None:
        log.info(
            "registration of {user} failed: {reason} {status} {detail}{retry}",
            user=self.user,
            reason=reason,
            status=status or "",
            detail=detail,
            retry=" (retrying)" if retrying else "",
        )
        self._auth_fresh = False
        self.granted = 0
        if retrying:
            self._failures += 1
            delay = min(RETRY_MAX, RETRY_BASE * 2 ** min(self._failures - 1, 10))
            delay = max(retry_after or 0.0, delay * self._rng.uniform(0.5, 1.0))
            self.state = "registering"
            self._schedule(delay, self._refresh)
        else:
            self.state = "failed"
        self.listener.registration_failed(reason, status, retrying, detail=detail)

    # -- helpers -----------------------------------------------------------------------------------------
    def _schedule(self, delay: float, fn) -> None:
        self._cancel_timer()
        self._timer = self.stack.reactor.callLater(delay, fn)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _finish_stop(self) -> None:
        if self._stop_guard is not None and self._stop_guard.active():
            self._stop_guard.cancel()
        self._stop_guard = None
        if self._txn is not None:
            self._txn.terminate()
            self._txn = None
        if self.state == "unregistered":
            return
        self.state = "unregistered"
        self.stack.forget_registration(self)
        try:
            self.listener.unregistered()
        finally:
            d = self._stopped
            if d is not None and not d.called:
                d.callback(None)


def _granted_expires(response: Response, contact, requested: int = 0) -> int | None:
    """The expiry the registrar granted our Contact (RFC 3261 §10.2.4); None when the 2xx does
    not list our Contact."""
    for value in response.headers.get_all("Contact"):
        try:
            addr = NameAddr.parse(value)
        except UriError:
            continue
        uri = addr.uri
        if uri.user != contact.user or uri.host.lower() != contact.host.lower():
            continue
        if (uri.port or 5060) != (contact.port or 5060):
            continue
        text = (addr.params.get("expires") or "").strip()
        if text.isdigit():
            return min(int(text), MAX_EXPIRES)
        text = (response.headers.get("Expires") or "").strip()
        return min(int(text), MAX_EXPIRES) if text.isdigit() else requested
    return None


def _retry_after(response: Response) -> float | None:
    text = (response.headers.get("Retry-After") or "").split(";")[0].split("(")[0].strip()
    return float(min(int(text), RETRY_MAX)) if text.isdigit() else None
