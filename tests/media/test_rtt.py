"""The round-trip time of the hangup stats, from the far end's report on our sender report."""

from __future__ import annotations

from b2bua.wire.rtcp import ReportBlock, RtcpReceiverReport, ntp_from_unix, ntp_middle32
from tests.media.test_bridge import FAR, make


def test_rtt_from_a_receiver_report_on_our_sender_report():
    bridge, leg, players, digits, now = make()
    sent_at = now[0]
    lsr = ntp_middle32(ntp_from_unix(sent_at))  # the far end echoes our SR's middle 32 bits
    now[0] = sent_at + 0.180  # its report arrives 180 ms after our SR...
    block = ReportBlock(ssrc=bridge.session.sender.ssrc, lsr=lsr, dlsr=int(0.130 * 65536))  # ...held 130 ms
    leg.audio_rtcp.datagramReceived(RtcpReceiverReport(ssrc=0x1234, reports=[block]).serialize(), FAR)
    assert abs(bridge.stats.rtt_ms - 50.0) < 1.0, bridge.stats.rtt_ms
