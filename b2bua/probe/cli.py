"""``mpb2bua-probe``: check a running gateway end to end, as a mini-program would use it.

Logs in, calls a number (FreeSWITCH's echo test 9196 by default), publishes a tone to the call's
push URL with ffmpeg (lavfi sine → AAC → FLV → RTMP, as ``<live-pusher>``), records the play URL
with ffmpeg (as ``<live-player>``), looks for the tone in what came back, hangs up and logs out,
printing every step with its timing. The exit code says how far it got (see ``EXIT_CODES``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import wave
from collections.abc import Callable
from typing import Any, NoReturn

from twisted.internet import defer, protocol, task
from twisted.internet.error import ProcessDone, ProcessTerminated

from b2bua.probe.rpc import RpcClient, RpcFailure, connect
from b2bua.probe.tone import ToneReport, analyse, pcm_to_floats

__all__ = ["main", "EXIT_CODES", "parse_args"]

EXIT_OK, EXIT_NO_TONE, EXIT_USAGE, EXIT_CONNECT, EXIT_LOGIN, EXIT_CALL, EXIT_TIMEOUT = 0, 1, 2, 3, 4, 5, 6
EXIT_CODES = {
    EXIT_OK: "the tone came back",
    EXIT_NO_TONE: "the call was answered but the tone did not come back (or ffmpeg failed)",
    EXIT_USAGE: "bad arguments, or ffmpeg not found",
    EXIT_CONNECT: "the WebSocket could not be opened (network, TLS, HTTP refusal)",
    EXIT_LOGIN: "login refused (the reason from the gateway is printed)",
    EXIT_CALL: "the call failed or ended before it was answered (cause printed)",
    EXIT_TIMEOUT: "--timeout ran out (the step it was waiting for is printed)",
}
PLAY_RATE = 16000  # what the player ffmpeg decodes to (mono s16le)
SILENCE_S = 2.0  # the publisher sends silence first, so the tone's onset can be found both ways
TAIL_S = 1.5  # the player keeps recording this long after the publisher ended
CLEANUP_S = 8.0  # hangup + logout after the main part, at most


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    codes = "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="mpb2bua-probe",
        description="Check an mpb2bua gateway end to end: log in, call, send a tone, hear it back.",
        epilog=f"exit codes:\n{codes}\n\nThe password or token may also come from MPB2BUA_PASSWORD "
        "or MPB2BUA_TOKEN (kept out of the process list).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url", default="ws://127.0.0.1:8080/ws", help="gateway WebSocket URL, ws:// or wss://"
    )
    parser.add_argument("--user", help="SIP user to log in as (with --password or --ha1)")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--password", help="the user's SIP password")
    secret.add_argument("--ha1", help="MD5 of user:realm:password instead of the password")
    secret.add_argument("--token", help="an operator-issued login token (no --user)")
    parser.add_argument("--to", default="9196", help="number to call (default 9196, FreeSWITCH's echo)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help=f"give up after this many seconds (default 60; hangup and logout "
        f"take at most {CLEANUP_S:g} s more)",
    )
    parser.add_argument("--tone", type=float, default=1000.0, help="tone frequency in Hz (default 1000)")
    parser.add_argument("--tone-seconds", type=float, default=3.0, help="tone length (default 3)")
    parser.add_argument("--record", metavar="WAV", help="keep what the player received in this WAV file")
    parser.add_argument("--insecure", action="store_true", help="wss: do not verify the server certificate")
    parser.add_argument("--ca-file", help="wss: trust this PEM certificate (e.g. a self-signed one)")
    parser.add_argument("--ffmpeg", default="ffmpeg", help="ffmpeg executable (default: from PATH)")
    args = parser.parse_args(argv)
    args.password = args.password or (None if args.ha1 or args.token else os.environ.get("MPB2BUA_PASSWORD"))
    args.token = args.token or (None if args.password or args.ha1 else os.environ.get("MPB2BUA_TOKEN"))
    if args.token and args.user:
        parser.error("--token names the user itself: leave out --user")
    if not args.token and not (args.user and (args.password or args.ha1)):
        parser.error("give --user with --password (or --ha1), or --token")
    if not 100 <= args.tone <= 3800:
        parser.error("--tone must be between 100 and 3800 Hz (the narrowest codec passes up to 4 kHz)")
    if not 1 <= args.tone_seconds <= 30 or args.timeout <= 0:
        parser.error("--tone-seconds must be 1..30 and --timeout positive")
    found = shutil.which(args.ffmpeg)
    if found is None:
        parser.error(f"{args.ffmpeg!r} not found: install ffmpeg (Debian: apt-get install ffmpeg)")
    args.ffmpeg = found
    return args


def short_url(url: str) -> str:
    """An RTMP URL with its stream key cut (the key is a secret for the call's media)."""
    base, _, key = url.rpartition("/")
    return f"{base}/{key[:4]}…" if key else url


class Signal:
    """A value that arrives once; every :meth:`wait` gets a Deferred of its own (safe to cancel)."""

    def __init__(self) -> None:
        self.fired = False
        self.value: Any = None
        self._waiters: list[defer.Deferred[Any]] = []

    def wait(self) -> defer.Deferred[Any]:
        if self.fired:
            return defer.succeed(self.value)
        d: defer.Deferred[Any] = defer.Deferred(self._forget)
        self._waiters.append(d)
        return d

    def _forget(self, d: defer.Deferred[Any]) -> None:
        if d in self._waiters:
            self._waiters.remove(d)

    def fire(self, value: Any = None) -> None:
        if self.fired:
            return
        self.fired, self.value = True, value
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(value)


class Ffmpeg(protocol.ProcessProtocol):
    """One ffmpeg: stdout goes to ``on_stdout(data)``; the end of stderr is kept for errors."""

    def __init__(self, name: str, on_stdout: Callable[[bytes], None]) -> None:
        self.name = name
        self.on_stdout = on_stdout
        self.stderr = bytearray()
        self.ended = Signal()  # fires with the exit code (negative: killed by that signal)

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self.on_stdout(data)

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self.stderr += data
        del self.stderr[:-2000]

    def processEnded(self, reason) -> None:  # noqa: N802
        if reason.check(ProcessDone):
            code = 0
        elif reason.check(ProcessTerminated):
            code = reason.value.exitCode if reason.value.exitCode is not None else -(reason.value.signal or 0)
        else:
            code = -1
        self.ended.fire(code)

    def error_text(self) -> str:
        lines = self.stderr.decode("utf-8", "replace").strip().splitlines()
        return lines[-1] if lines else "no message"

    def stop(self) -> None:
        if not self.ended.fired:
            self.transport.signalProcess("KILL")


class Probe:
    def __init__(self, reactor, args: argparse.Namespace, out=None) -> None:
        self.reactor = reactor
        self.args = args
        self.out = out or sys.stdout
        self.t0 = reactor.seconds()
        self.step = "starting"
        self.client: RpcClient | None = None
        self.logged_in = False
        self.call_id: str | None = None
        self.answered = Signal()
        self.call_ended = Signal()  # fires with the hangup event's params
        self.player_connected = Signal()
        self.processes: list[Ffmpeg] = []
        self.played = bytearray()
        self.play_chunks: list[tuple[float, int]] = []  # (wall, bytes received so far)
        self.progress: list[tuple[float, float]] = []  # (wall, publisher out_time in s)
        self._progress_buf = b""

    # -- output ------------------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(f"[{self.reactor.seconds() - self.t0:7.3f} s] {text}", file=self.out, flush=True)

    def ms(self, since: float) -> str:
        return f"{(self.reactor.seconds() - since) * 1000:.0f} ms"

    # -- events ------------------------------------------------------------------------------------------
    def on_event(self, name: str, params: dict[str, Any]) -> None:
        if name == "registered":
            self.say(f"event registered: user {params.get('user')}, expires {params.get('expires')} s")
        elif name == "pbx":
            self.say(f"event pbx: the PBX is {'reachable' if params.get('reachable') else 'unreachable'}")
        elif name in ("registration_failed", "unregistered"):
            self.say(f"event {name}: {_fields(params)}")
        elif params.get("call") != self.call_id or self.call_id is None:
            return  # another call of this user (an incoming one): not ours
        elif name == "ringing":
            self.say(f"ringing ({params.get('status')})")
        elif name == "early_media":
            self.say(f"early media ({params.get('status')}), codec {params.get('codec')}")
        elif name == "answered":
            self.answered.fire(params)
        elif name == "media":
            why = f" ({params['reason']})" if params.get("reason") else ""
            self.say(f"gateway: {params.get('stream')} {params.get('state')}{why}")
            if params.get("stream") == "player" and params.get("state") == "connected":
                self.player_connected.fire()
        elif name == "hangup":
            self.call_ended.fire(params)
        elif name == "dtmf":
            self.say(f"dtmf {params.get('digits')} ({params.get('via')})")

    # -- the steps ---------------------------------------------------------------------------------------
    async def run(self) -> int:
        args = self.args
        who = f"user {args.user}" if args.user else "a token"
        self.say(f"probe: {args.url} as {who}, calling {args.to}")
        self.step = "connecting"
        started = self.reactor.seconds()
        try:
            self.client = await connect(
                self.reactor,
                args.url,
                self.on_event,
                insecure=args.insecure,
                ca_file=args.ca_file,
                timeout=min(10.0, args.timeout),
            )
        except Exception as e:  # noqa: BLE001 - any network/TLS/HTTP failure is the answer
            return self.failed(EXIT_CONNECT, f"cannot connect to {args.url}: {_error_text(e)}")
        self.say(f"connected in {self.ms(started)}")

        self.step = "logging in (REGISTER at the PBX)"
        started = self.reactor.seconds()
        try:
            result = await self.client.request("login", self.credentials())
        except RpcFailure as e:
            return self.failed(EXIT_LOGIN, f"login failed: {e.describe()}", e.reason)
        except ConnectionError as e:
            return self.failed(EXIT_LOGIN, f"login failed: {e}")
        self.logged_in = True
        self.say(
            f"logged in as {result.get('user')}: registered in {self.ms(started)} "
            f"(expires {result.get('expires')} s)"
        )

        self.step = f"calling {args.to}"
        started = self.reactor.seconds()
        try:
            result = await self.client.request("call", {"to": args.to})
        except RpcFailure as e:
            return self.failed(EXIT_CALL, f"call refused: {e.describe()}", e.reason)
        except ConnectionError as e:
            return self.failed(EXIT_CALL, f"call failed: {e}")
        self.call_id = result["call"]
        self.say(
            f"call {self.call_id}: INVITE sent ({self.ms(started)}); "
            f"push {short_url(result['push_url'])} play {short_url(result['play_url'])}"
        )
        self.step = "waiting for the answer"
        which, params = await defer.race([self.answered.wait(), self.call_ended.wait()])
        if which == 1:
            return self.failed(EXIT_CALL, f"call failed: {_hangup_text(params)}", params.get("cause"))
        self.say(f"answered in {self.ms(started)}, codec {params.get('codec') or 'none'}")

        report = await self.media(result["push_url"], result["play_url"])
        if self.call_ended.fired:
            return self.failed(
                EXIT_NO_TONE, f"the call ended during the test: {_hangup_text(self.call_ended.value)}"
            )
        if report is None:
            return self.failed(EXIT_NO_TONE, "no media came back")
        self.step = "hanging up"
        started = self.reactor.seconds()
        try:
            await self.client.request("hangup", {"call": self.call_id})
            params = await self.call_ended.wait().addTimeout(5, self.reactor)
            self.say(f"hung up in {self.ms(started)}: {_hangup_text(params)}")
        except Exception as e:  # noqa: BLE001
            self.say(f"hangup: {_error_text(e)}")
        if report.heard:
            self.say(f"RESULT: OK, the tone came back (exit {EXIT_OK})")
            return EXIT_OK
        return self.failed(EXIT_NO_TONE, f"the tone did not come back: {report.why}")

    def credentials(self) -> dict[str, str]:
        args = self.args
        if args.token:
            return {"token": args.token}
        if args.ha1:
            return {"user": args.user, "ha1": args.ha1}
        return {"user": args.user, "password": args.password}

    async def media(self, push_url: str, play_url: str) -> ToneReport | None:
        args = self.args
        self.step = "starting the player (ffmpeg, play URL)"
        player = self.spawn("player", self.player_args(play_url), self.on_played)
        # the tone must not start before the player is there: wait for the gateway to see it
        which, _ = await defer.race(
            [
                self.player_connected.wait(),
                player.ended.wait(),
                self.call_ended.wait(),
                task.deferLater(self.reactor, 5.0, lambda: None),
            ]
        )
        if which == 1:
            self.say(f"player: ffmpeg exited with {player.ended.value}: {player.error_text()}")
            return None
        self.step = "sending the tone (ffmpeg, push URL)"
        publisher = self.spawn("publisher", self.publisher_args(push_url), self.on_progress)
        self.say(f"publisher: {SILENCE_S:g} s of silence, then {args.tone:g} Hz for {args.tone_seconds:g} s")
        which, code = await defer.race([publisher.ended.wait(), self.call_ended.wait()])
        if which == 0 and code != 0:
            self.say(f"publisher: ffmpeg exited with {code}: {publisher.error_text()}")
        self.step = "recording the tail of the echo"
        await defer.race(
            [task.deferLater(self.reactor, TAIL_S, lambda: None), self.call_ended.wait(), player.ended.wait()]
        )
        if player.ended.fired and player.ended.value != 0:
            self.say(f"player: ffmpeg exited with {player.ended.value}: {player.error_text()}")
        player.stop()
        self.say(f"player received {len(self.played) / 2 / PLAY_RATE:.1f} s of audio")
        if args.record:
            self.save(args.record)
        samples = pcm_to_floats(bytes(self.played))
        report = analyse(samples, PLAY_RATE, args.tone, args.tone_seconds)
        self.say(report.describe(args.tone))
        if report.onset_s is not None:
            rtt = self.round_trip(report.onset_s)
            self.say(
                f"round trip ≈ {rtt * 1000:.0f} ms (tone onset sent → heard; ffmpeg buffering included)"
                if rtt is not None
                else "round trip: not measurable (no timing around the onset)"
            )
        return report

    # -- ffmpeg ------------------------------------------------------------------------------------------
    def spawn(self, name: str, args: list[str], on_stdout: Callable[[bytes], None]) -> Ffmpeg:
        proc = Ffmpeg(name, on_stdout)
        self.processes.append(proc)
        argv = [self.args.ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", *args]
        self.reactor.spawnProcess(proc, argv[0], argv, env=dict(os.environ))
        return proc

    def publisher_args(self, url: str) -> list[str]:
        total = SILENCE_S + self.args.tone_seconds
        return [
            "-re", "-f", "lavfi", "-i", f"sine=f={self.args.tone:g}:sample_rate=44100:duration={total:g}",
            "-af", f"volume=enable='lt(t,{SILENCE_S:g})':volume=0",
            "-c:a", "aac", "-b:a", "64k", "-ar", "44100", "-ac", "1",
            "-progress", "pipe:1", "-stats_period", "0.05",
            "-f", "flv", url,
        ]  # fmt: skip

    def player_args(self, url: str) -> list[str]:
        return [
            # probe the stream briefly: ffmpeg holds its output back while it probes (5 s by default)
            "-probesize", "2048", "-analyzeduration", "100000", "-i", url,
            "-vn", "-ac", "1", "-ar", str(PLAY_RATE), "-f", "s16le", "-flush_packets", "1", "pipe:1",
        ]  # fmt: skip

    def on_played(self, data: bytes) -> None:
        self.played += data
        self.play_chunks.append((self.reactor.seconds(), len(self.played)))

    def on_progress(self, data: bytes) -> None:
        now = self.reactor.seconds()
        self._progress_buf += data
        *lines, self._progress_buf = self._progress_buf.split(b"\n")
        for line in lines:
            if line.startswith(b"out_time_us="):
                try:
                    self.progress.append((now, int(line.split(b"=", 1)[1]) / 1e6))
                except ValueError:
                    pass  # "N/A" before the first packet

    def round_trip(self, onset_s: float) -> float | None:
        """Wall time the onset was heard minus wall time it was sent. Data can only arrive late, so
        each side's clock is mapped to wall time by its least-delayed report around the onset."""
        heard = [
            wall - n / 2 / PLAY_RATE
            for wall, n in self.play_chunks
            if onset_s <= n / 2 / PLAY_RATE <= onset_s + 1.0
        ]
        sent = [wall - t for wall, t in self.progress if SILENCE_S <= t <= SILENCE_S + 1.0]
        if not heard or not sent:
            return None
        return (min(heard) + onset_s) - (min(sent) + SILENCE_S)

    def save(self, path: str) -> None:
        with wave.open(path, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(PLAY_RATE)
            w.writeframes(bytes(self.played))
        self.say(f"recording saved to {path}")

    # -- the end -----------------------------------------------------------------------------------------
    def failed(self, code: int, text: str, reason: str | None = None) -> int:
        self.say(text)
        self.say(f"RESULT: FAILED{': ' + reason if reason else ''} (exit {code})")
        return code

    async def cleanup(self) -> None:
        """Stop ffmpeg, hang up and log out (each bounded), close the socket."""
        for proc in self.processes:
            proc.stop()
        client = self.client
        if client is None or client.close_code is not None:
            return
        try:
            if self.call_id is not None and not self.call_ended.fired:
                await client.request("hangup", {"call": self.call_id}).addTimeout(3, self.reactor)
                params = await self.call_ended.wait().addTimeout(3, self.reactor)
                self.say(f"hung up: {_hangup_text(params)}")
            if self.logged_in:
                await client.request("logout").addTimeout(CLEANUP_S - 6, self.reactor)
                self.say("logged out")
        except Exception as e:  # noqa: BLE001 - best effort: the gateway ends the session anyway
            self.say(f"cleanup: {_error_text(e)}")
        client.close()


def _fields(params: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in params.items())


def _hangup_text(params: dict[str, Any]) -> str:
    text = f"{params.get('cause')}"
    details = [f"{k} {params[k]}" for k in ("sip_status", "reason", "by") if params.get(k) is not None]
    if details:
        text += f" ({', '.join(details)})"
    media = params.get("media")
    if media:
        keys = ("codec", "rtp_sent", "rtp_received", "lost", "jitter_ms", "added_delay_ms")
        text += "; media " + ", ".join(f"{k} {media[k]}" for k in keys if k in media)
    return text


def _error_text(e: BaseException) -> str:
    if isinstance(e, defer.TimeoutError):
        return "no answer in time"
    return str(e) or type(e).__name__


async def _probe(reactor, args: argparse.Namespace) -> NoReturn:
    probe = Probe(reactor, args)
    d = defer.Deferred.fromCoroutine(probe.run())
    timer = reactor.callLater(args.timeout, d.cancel)
    try:
        code = await d
    except Exception:
        if timer.active():
            raise  # a bug, not the timeout: the traceback is printed, exit 1
        code = probe.failed(EXIT_TIMEOUT, f"timed out after {args.timeout:g} s while {probe.step}", "timeout")
    else:
        if timer.active():
            timer.cancel()
    await probe.cleanup()
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> NoReturn:
    try:
        args = parse_args(argv)
    except SystemExit as e:  # argparse: 2 for bad usage, 0 for --help
        raise SystemExit(EXIT_USAGE if e.code else 0) from None
    task.react(lambda reactor: defer.Deferred.fromCoroutine(_probe(reactor, args)))
