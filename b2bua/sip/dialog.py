"""SIP dialogs (RFC 3261 §12): the state two UAs share, and how in-dialog requests are built and routed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from b2bua.sip.transaction import Target
from b2bua.wire.sip import Request, Response
from b2bua.wire.sipuri import NameAddr, SipUri, UriError

if TYPE_CHECKING:
    from b2bua.sip.ua import SipStack


# what we accept: REFER is only sent (blind transfer), the NOTIFYs of its subscription come back
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, MESSAGE, UPDATE, NOTIFY"


class DialogError(ValueError):
    """A message that cannot establish or continue a dialog."""


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str
    remote_uri: str
    remote_target: str
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 1
    remote_cseq: int | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def for_uac(cls, request: Request, response: Response) -> Dialog:
        """From our INVITE and its 1xx-with-tag or 2xx (§12.1.2): the route set is reversed."""
        to = _name_addr(response.headers.get("To"), "To")
        if not to.tag:
            raise DialogError("response has no To tag")
        return cls(
            call_id=request.call_id,
            local_tag=_name_addr(request.headers.get("From"), "From").tag or "",
            remote_tag=to.tag,
            local_uri=str(_name_addr(request.headers.get("From"), "From").uri),
            remote_uri=str(to.uri),
            remote_target=_contact(response),
            route_set=list(reversed(response.headers.get_all("Record-Route"))),
            local_cseq=request.cseq[0],
        )

    @classmethod
    def for_uas(cls, request: Request, local_tag: str) -> Dialog:
        """From an INVITE we answer (§12.1.1): the route set keeps its order."""
        sender = _name_addr(request.headers.get("From"), "From")
        if not sender.tag:
            raise DialogError("request has no From tag")
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=sender.tag,
            local_uri=str(_name_addr(request.headers.get("To"), "To").uri),
            remote_uri=str(sender.uri),
            remote_target=_contact(request),
            route_set=list(request.headers.get_all("Record-Route")),
            local_cseq=0,
            remote_cseq=request.cseq[0],
        )

    def update_target(self, message: Request | Response) -> None:
        """A target refresh (re-INVITE, UPDATE, or their 2xx) may change the remote Contact."""
        if message.headers.get("Contact"):
            try:
                self.remote_target = _contact(message)
            except DialogError:
                pass

    def accept_remote_cseq(self, request: Request) -> bool:
        """§12.2.2: a request with a lower CSeq than the last one is out of order (answer 500)."""
        seq = request.cseq[0]
        if request.method in ("ACK", "CANCEL"):
            return True
        if self.remote_cseq is not None and seq <= self.remote_cseq:
            return False
        self.remote_cseq = seq
        return True

    def new_request(self, stack: SipStack, method: str, cseq: int | None = None) -> Request:
        """An in-dialog request; ``cseq`` is given for ACK (the INVITE's number)."""
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        uri, routes = self._request_uri_and_routes()
        request = stack.new_request(
            method,
            uri,
            from_uri=self.local_uri,
            from_tag=self.local_tag,
            to_uri=self.remote_uri,
            call_id=self.call_id,
            cseq=cseq,
            target=self.next_hop(),
            to_tag=self.remote_tag,
        )
        for route in routes:
            request.headers.add("Route", route)
        return request

    def _request_uri_and_routes(self) -> tuple[str, list[str]]:
        if not self.route_set:
            return self.remote_target, []
        first = _name_addr(self.route_set[0], "Route").uri
        if "lr" in first.params:
            return self.remote_target, list(self.route_set)
        # strict router (RFC 2543): its URI becomes the Request-URI, the target goes last
        return str(first), list(self.route_set[1:]) + [f"<{self.remote_target}>"]

    def next_hop(self) -> Target:
        uri = _name_addr(self.route_set[0], "Route").uri if self.route_set else _uri(self.remote_target)
        return target_of(uri)


def target_of(uri: SipUri) -> Target:
    transport = uri.transport.upper()
    default = 5061 if transport == "TLS" else 5060
    return Target(transport, uri.host.strip("[]"), uri.port or default)


def _name_addr(value: str | None, what: str) -> NameAddr:
    if not value:
        raise DialogError(f"missing {what}")
    try:
        return NameAddr.parse(value)
    except UriError as e:
        raise DialogError(f"bad {what}: {e}") from None


def _uri(text: str) -> SipUri:
    try:
        return SipUri.parse(text)
    except UriError as e:
        raise DialogError(f"bad URI {text[:80]!r}: {e}") from None


def _contact(message: Request | Response) -> str:
    values = message.headers.get_all("Contact")
    if not values:
        raise DialogError("missing Contact")
    addr = _name_addr(values[0], "Contact")
    if addr.wildcard:
        raise DialogError("wildcard Contact")
    return str(addr.uri)
