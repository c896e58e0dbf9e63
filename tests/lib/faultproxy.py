#!/usr/bin/env python3
"""faultproxy: an HTTP reverse proxy for S3 that injects faults, for the walfs tests.

Python 3.11 standard library only.  It listens on 127.0.0.1 and forwards
every request, byte for byte (request line, Host and every other header,
body), to one upstream S3 server (Ceph RGW in the tests), so SigV4
signatures still verify.  For each request it decides, from one seeded
random generator, whether to inject a fault instead of (or on top of)
forwarding it:

  503             answer 503 with an S3 XML error body (Code SlowDown); not forwarded
  500             answer 500 with an S3 XML error body (Code InternalError); not forwarded
  reset-before    read the request, then reset the connection (RST, SO_LINGER 0)
                  before any response; not forwarded
  reset-mid-body  forward; send the real headers and part of the real body, then
                  reset.  A body under 16 bytes (a PUT's, a HEAD's) cannot be cut:
                  falls back to reset-before (counted under fallbacks)
  stall           forward; hold the response, sending nothing, for --stall-seconds,
                  then close the connection (FIN)
  short-body      forward; send the real headers (real Content-Length) and part of
                  the body, then close cleanly (FIN).  No body to cut (HEAD, an
                  empty 200): close cleanly before any response (counted under
                  fallbacks)
  reset-after     (not in the default set) forward and let the server act, then
                  reset before sending its answer: a lost response

A hostile server's listings (ListObjectsV2 requests only, "list=MODE" in the
control file or --list-mode; every other request is forwarded as usual):
  off             (default) forwarded like any request
  repeat-token    forwarded; a 200 page comes back truncated with the
                  continuation token "walfs-loop", and a request carrying a
                  token gets that same page again: a listing that never ends
  many:N          not forwarded: N synthetic WAL keys under the requested prefix
                  (00000001000000XX... .lzo), in pages of max-keys (1000), with
                  proper tokens: a large archive without storing it
  advancing       not forwarded: like many: but endless, one key a page, each
                  key greater than the last and each token new: a listing that
                  passes every loop check and never ends
  bad-keys        forwarded; a 200 page gets impossible entries added: a key past
                  the delimiter, a key outside the prefix, a negative size, an
                  empty key
  huge-error:N    not forwarded: 403 with an N-byte error body, streamed until the
                  client stops reading (bytes sent: stats huge_error_sent)
  echo-403        not forwarded: 403 whose Message echoes the request's headers
                  (Authorization, x-amz-security-token), as a broken proxy does
  echo-token-403  not forwarded: 403 whose Message holds the bare session token
                  (no header name before it), longer than a client keeps
  bad-encoding    not forwarded: 200 with a body declared Shift_JIS holding bytes
                  that are not (libxml2's encoding error)
Answers of these modes are counted in stats list_mode_answers.

Usage:
  faultproxy.py --upstream http://127.0.0.1:7610 --listen 7611 --seed 1 \
      --fault-rate 0.25 [--kinds 503,500,reset-before,reset-mid-body,stall,short-body] \
      [--stall-seconds 8] [--stats FILE] [--log FILE] [--control FILE] [--port-file FILE]

  --listen 0 picks a free port; --port-file receives the port once listening.
  --stats FILE   JSON counters, rewritten (atomically) after every request:
                 requests, forwarded, faults {kind: n}, fallbacks, upstream_errors
                 (the upstream refused or dropped the connection: the client gets
                 a reset, not counted as an injected fault), by_method, fault_rate.
  --log FILE     one line per request: time, connection, method, target, outcome.
  --control FILE read before each request when its mtime changed: "rate=R",
                 "kinds=K1,K2" and/or "list=MODE", or a bare number (the rate).  So a test
                 can turn faults on and off while the proxy runs.
  SIGUSR1 prints the counters on stderr (and rewrites --stats); SIGTERM/SIGINT
  write them and exit 0.

Each client connection gets a thread and its own upstream connection (kept
alive while both sides keep alive; a reused upstream connection that turns
out dead is reopened once).  A stalled request holds only its own thread.
Request bodies are read completely (Content-Length or chunked, raw) before
the decision; an "Expect: 100-continue" is answered by the proxy and the
upstream's interim 1xx answers are dropped.  Responses are streamed.
"""

import argparse
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse

ALL_KINDS = ("503", "500", "reset-before", "reset-mid-body", "stall", "short-body", "reset-after")
DEFAULT_KINDS = ("503", "500", "reset-before", "reset-mid-body", "stall", "short-body")
MIN_CUT_BODY = 16  # bodies shorter than this are not cut (reset-mid-body falls back)
HEAD_LIMIT = 256 * 1024
RELAY_CHUNK = 256 * 1024


class ProtocolError(Exception):
    pass


class Peer:
    """A socket with a read buffer: HTTP heads, lines and exact byte counts."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.got_any = False  # any byte ever received (stale keep-alive detection)

    def _fill(self):
        data = self.sock.recv(RELAY_CHUNK)
        if not data:
            return False
        self.got_any = True
        self.buf += data
        return True

    def _read_until(self, delim, what, eof_ok):
        """The bytes up to and including delim; None on EOF before any byte if eof_ok."""
        start = 0
        while True:
            i = self.buf.find(delim, max(0, start - len(delim) + 1))
            if i >= 0:
                out = bytes(self.buf[: i + len(delim)])
                del self.buf[: i + len(delim)]
                return out
            if len(self.buf) > HEAD_LIMIT:
                raise ProtocolError(what + " too long")
            start = len(self.buf)
            if not self._fill():
                if eof_ok and not self.buf:
                    return None
                raise ProtocolError("EOF inside a " + what)

    def read_head(self):
        """The bytes up to and including the blank line; None on EOF before any byte."""
        return self._read_until(b"\r\n\r\n", "head", True)

    def read_line(self):
        return self._read_until(b"\r\n", "line", False)

    def read_some(self, limit):
        """Up to limit bytes (at least 1); b'' on EOF."""
        if not self.buf and not self._fill():
            return b""
        n = min(limit, len(self.buf))
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_exact(self, n):
        parts = []
        while n > 0:
            piece = self.read_some(n)
            if not piece:
                raise ProtocolError("EOF inside a body")
            parts.append(piece)
            n -= len(piece)
        return b"".join(parts)


def parse_head(head):
    """(first line as 3 strings, [(lower name, value)]) of an HTTP head."""
    lines = head[:-4].split(b"\r\n")
    first = lines[0].decode("latin-1").split(" ", 2)
    while len(first) < 3:
        first.append("")
    headers = []
    for raw in lines[1:]:
        name, sep, value = raw.partition(b":")
        if not sep:
            raise ProtocolError("bad header line")
        headers.append((name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")))
    return first, headers


def header(headers, name):
    for n, v in headers:
        if n == name:
            return v
    return None


def has_token(headers, name, token):
    token = token.lower()
    for n, v in headers:
        if n == name and token in [t.strip().lower() for t in v.split(",")]:
            return True
    return False


def framing(headers, method=None, status=None):
    """('none'|'length'|'chunked'|'close', length) of a message body."""
    if method == "HEAD" or (status is not None and (100 <= status < 200 or status in (204, 304))):
        return "none", 0
    te = header(headers, "transfer-encoding")
    if te is not None and "chunked" in te.lower():
        return "chunked", None
    cl = header(headers, "content-length")
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            raise ProtocolError("bad Content-Length")
        if n < 0:
            raise ProtocolError("bad Content-Length")
        return "length", n
    if status is None:
        return "none", 0  # a request without either has no body
    return "close", None


def read_chunked_raw(peer):
    """The raw bytes of a chunked body, trailers included."""
    parts = []
    while True:
        line = peer.read_line()
        parts.append(line)
        size_txt = line.split(b";", 1)[0].strip()
        try:
            size = int(size_txt, 16)
        except ValueError:
            raise ProtocolError("bad chunk size")
        if size == 0:
            while True:
                t = peer.read_line()
                parts.append(t)
                if t == b"\r\n":
                    return b"".join(parts)
        parts.append(peer.read_exact(size + 2))


def read_body_raw(peer, kind, length):
    if kind == "none":
        return b""
    if kind == "length":
        return peer.read_exact(length)
    if kind == "chunked":
        return read_chunked_raw(peer)
    parts = []
    while True:
        piece = peer.read_some(RELAY_CHUNK)
        if not piece:
            return b"".join(parts)
        parts.append(piece)


def reset(sock):
    """Close with RST (SO_LINGER 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def close_clean(sock):
    """Close with FIN."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class State:
    """Configuration that may change at run time, the generator, the counters."""

    def __init__(self, args):
        self.lock = threading.Lock()
        self.rng = random.Random(args.seed)
        self.rate = args.fault_rate
        self.kinds = list(args.kinds)
        self.list_mode = args.list_mode
        self.loop_pages = {}  # repeat-token: prefix -> the page served again
        self.control = args.control
        self.control_mtime = None
        self.stats_path = args.stats
        self.log_path = args.log
        self.log_file = open(args.log, "a", buffering=1) if args.log else None
        self.conn_seq = 0
        self.req_seq = 0
        self.c = {
            "requests": 0,
            "forwarded": 0,
            "faults_total": 0,
            "faults": {k: 0 for k in self.kinds},
            "fallbacks": {},
            "upstream_errors": 0,
            "by_method": {},
            "faults_by_method": {},
            "connections": 0,
            "protocol_errors": 0,
            "list_mode_answers": 0,
            "huge_error_sent": 0,
        }

    def reload_control(self):
        if not self.control:
            return
        try:
            st = os.stat(self.control)
        except OSError:
            return
        if st.st_mtime_ns == self.control_mtime:
            return
        self.control_mtime = st.st_mtime_ns
        try:
            with open(self.control) as f:
                text = f.read()
        except OSError:
            return
        for tok in text.split():
            if "=" in tok:
                k, _, v = tok.partition("=")
                if k == "rate":
                    self.rate = float(v)
                elif k == "list":
                    self.list_mode = v
                elif k == "kinds":
                    kinds = [x for x in v.split(",") if x]
                    bad = [x for x in kinds if x not in ALL_KINDS]
                    if bad:
                        print(f"faultproxy: control: unknown kinds {bad}", file=sys.stderr)
                    else:
                        self.kinds = kinds
            else:
                try:
                    self.rate = float(tok)
                except ValueError:
                    pass
        for k in self.kinds:
            self.c["faults"].setdefault(k, 0)
        print(f"faultproxy: control: rate={self.rate} kinds={','.join(self.kinds)} "
              f"list={self.list_mode}", file=sys.stderr)

    def add(self, key, n):
        with self.lock:
            self.c[key] += n
            self.write_stats_locked()

    def decide(self, method):
        """(request number, fault kind or None, fraction for cuts); counts the request."""
        with self.lock:
            self.reload_control()
            self.req_seq += 1
            r = self.rng.random()
            pick = self.rng.random()
            frac = self.rng.random()
            kind = None
            if self.kinds and r < self.rate:
                kind = self.kinds[min(int(pick * len(self.kinds)), len(self.kinds) - 1)]
            self.c["requests"] += 1
            bm = self.c["by_method"]
            bm[method] = bm.get(method, 0) + 1
            return self.req_seq, kind, frac

    def record(self, method, kind, fallback=None, forwarded=False, upstream_error=False, line=""):
        with self.lock:
            if kind:
                self.c["faults_total"] += 1
                self.c["faults"][kind] = self.c["faults"].get(kind, 0) + 1
                fm = self.c["faults_by_method"].setdefault(method, {})
                fm[kind] = fm.get(kind, 0) + 1
            if fallback:
                fb = self.c["fallbacks"]
                fb[fallback] = fb.get(fallback, 0) + 1
            if forwarded:
                self.c["forwarded"] += 1
            if upstream_error:
                self.c["upstream_errors"] += 1
            if self.log_file and line:
                self.log_file.write(line + "\n")
            self.write_stats_locked()

    def count(self, key, line=""):
        with self.lock:
            self.c[key] += 1
            if self.log_file and line:
                self.log_file.write(line + "\n")
            self.write_stats_locked()

    def snapshot_locked(self):
        d = dict(self.c)
        d["fault_rate"] = self.rate
        d["kinds"] = list(self.kinds)
        d["time"] = time.time()
        return d

    def write_stats_locked(self):
        if not self.stats_path:
            return
        tmp = f"{self.stats_path}.tmp.{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                json.dump(self.snapshot_locked(), f, indent=1, sort_keys=True)
                f.write("\n")
            os.replace(tmp, self.stats_path)
        except OSError as e:
            print(f"faultproxy: cannot write {self.stats_path}: {e}", file=sys.stderr)

    def dump(self):
        with self.lock:
            print(json.dumps(self.snapshot_locked(), sort_keys=True), file=sys.stderr, flush=True)
            self.write_stats_locked()


def error_response(code, s3code, message, resource, method, reqno):
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{s3code}</Code><Message>{message}</Message>"
        f"<Resource>{resource}</Resource><RequestId>faultproxy-{reqno}</RequestId></Error>"
    ).encode()
    reason = {500: "Internal Server Error", 503: "Service Unavailable"}[code]
    head = (
        f"HTTP/1.1 {code} {reason}\r\n"
        f"x-amz-request-id: faultproxy-{reqno}\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}\r\n"
        "\r\n"
    ).encode()
    return head if method == "HEAD" else head + body


class Handler:
    def __init__(self, state, args, sock, conn_id):
        self.state = state
        self.args = args
        self.client = Peer(sock)
        self.conn_id = conn_id
        self.up = None  # Peer of the upstream connection

    def close_up(self):
        if self.up is not None:
            try:
                self.up.sock.close()
            except OSError:
                pass
            self.up = None

    def connect_up(self):
        s = socket.create_connection((self.args.up_host, self.args.up_port),
                                     timeout=self.args.connect_timeout)
        s.settimeout(self.args.upstream_timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.up = Peer(s)

    def forward(self, req_bytes, method):
        """Send the request upstream, return (head bytes, status, headers) of the final
        answer.  A reused connection that is found dead is reopened once."""
        for attempt in (0, 1):
            reused = self.up is not None
            try:
                if self.up is None:
                    self.connect_up()
                self.up.got_any = False
                self.up.sock.sendall(req_bytes)
                while True:
                    head = self.up.read_head()
                    if head is None:
                        raise ConnectionResetError("upstream closed before answering")
                    first, headers = parse_head(head)
                    status = int(first[1])
                    if 100 <= status < 200 and status != 101:
                        continue  # interim answer (100 Continue): the client had ours
                    return head, status, headers
            except (OSError, ProtocolError, ValueError):
                stale = reused and not self.up_got_any()
                self.close_up()
                if attempt == 0 and stale:
                    continue
                raise

    def up_got_any(self):
        return self.up is not None and self.up.got_any

    def log(self, reqno, method, target, outcome, t0):
        return (f"{time.time():.3f} c{self.conn_id} r{reqno} {method} {target} {outcome} "
                f"{(time.monotonic() - t0) * 1000:.0f}ms")

    def run(self):
        sock = self.client.sock
        sock.settimeout(self.args.client_idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while self.one_request():
                pass
        except (OSError, ProtocolError) as e:
            if not isinstance(e, (socket.timeout, ConnectionResetError, BrokenPipeError)):
                self.state.count("protocol_errors", f"{time.time():.3f} c{self.conn_id} error {e!r}")
        finally:
            self.close_up()
            try:
                sock.close()
            except OSError:
                pass

    def one_request(self):
        """Handle one request; True to keep the client connection for another."""
        st = self.state
        sock = self.client.sock
        head = self.client.read_head()
        if head is None:
            return False
        t0 = time.monotonic()
        (method, target, version), headers = parse_head(head)
        if has_token(headers, "expect", "100-continue"):
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        bk, blen = framing(headers)
        body = read_body_raw(self.client, bk, blen)
        client_close = version == "HTTP/1.0" or has_token(headers, "connection", "close")
        reqno, kind, frac = st.decide(method)
        resource = urllib.parse.urlsplit(target).path
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query, keep_blank_values=True)
        if st.list_mode != "off" and method == "GET" and query.get("list-type") == ["2"]:
            return self.hostile_list(head + body, method, target, query, headers, reqno, t0,
                                     client_close)

        if kind in ("503", "500"):
            code, s3code, msg = ((503, "SlowDown", "Please reduce your request rate.") if kind == "503"
                                 else (500, "InternalError", "We encountered an internal error. Please try again."))
            sock.sendall(error_response(code, s3code, msg, resource, method, reqno))
            st.record(method, kind, line=self.log(reqno, method, target, f"fault={kind}", t0))
            return not client_close
        if kind == "reset-before":
            reset(sock)
            st.record(method, kind, line=self.log(reqno, method, target, "fault=reset-before", t0))
            return False

        try:
            rhead, status, rheaders = self.forward(head + body, method)
        except (OSError, ProtocolError, ValueError) as e:
            # The upstream is down or dropped us: the client sees a reset, as it
            # would see a refused or dropped connection without the proxy.
            reset(sock)
            st.record(method, None, upstream_error=True,
                      line=self.log(reqno, method, target, f"upstream-error={e!r} (planned {kind})", t0))
            return False

        rk, rlen = framing(rheaders, method, status)
        resp_close = has_token(rheaders, "connection", "close") or rk == "close"
        outcome = f"status={status}"

        if kind is None:
            sock.sendall(rhead)
            sent = self.relay(rk, rlen)
            st.record(method, None, forwarded=True,
                      line=self.log(reqno, method, target, f"{outcome} body={sent}", t0))
            if resp_close:
                self.close_up()
                close_clean(sock)
                return False
            return not client_close

        if kind == "stall":
            self.close_up()
            st.record(method, kind, forwarded=True,
                      line=self.log(reqno, method, target, f"{outcome} fault=stall {self.args.stall_seconds}s", t0))
            time.sleep(self.args.stall_seconds)
            close_clean(sock)
            return False

        if kind == "reset-after":
            self.close_up()
            reset(sock)
            st.record(method, kind, forwarded=True,
                      line=self.log(reqno, method, target, f"{outcome} fault=reset-after", t0))
            return False

        # reset-mid-body / short-body: the real head, part of the real body.
        if rk == "length":
            total = rlen
            buffered = None
        else:
            buffered = read_body_raw(self.up, rk, rlen)
            total = len(buffered)
        fallback = None
        if kind == "reset-mid-body" and total < MIN_CUT_BODY:
            fallback = "reset-mid-body->reset-before"
        elif kind == "short-body" and total < 2:
            fallback = "short-body->close-before"
        if fallback:
            self.close_up()
            (reset if kind == "reset-mid-body" else close_clean)(sock)
            st.record(method, kind, fallback=fallback, forwarded=True,
                      line=self.log(reqno, method, target, f"{outcome} fault={kind} fallback (body {total})", t0))
            return False
        cut = 1 + int(frac * (total - 1))  # 1 .. total-1 bytes of the body
        cut = max(1, min(cut, total - 1))
        sock.sendall(rhead)
        if buffered is None:
            left = cut
            while left > 0:
                piece = self.up.read_some(min(left, RELAY_CHUNK))
                if not piece:
                    break
                sock.sendall(piece)
                left -= len(piece)
        else:
            sock.sendall(buffered[:cut])
        self.close_up()
        if kind == "reset-mid-body":
            reset(sock)
        else:
            close_clean(sock)
        st.record(method, kind, forwarded=True,
                  line=self.log(reqno, method, target, f"{outcome} fault={kind} sent {cut}/{total}", t0))
        return False

    def send_answer(self, status, reason, body, ctype="application/xml"):
        head = (f"HTTP/1.1 {status} {reason}\r\n"
                "x-amz-request-id: faultproxy-list\r\n"
                f"Content-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.client.sock.sendall(head + body)

    def upstream_page(self, req_bytes, method):
        """(status, body bytes) of the real server's answer, read whole."""
        rhead, status, rheaders = self.forward(req_bytes, method)
        rk, rlen = framing(rheaders, method, status)
        raw = read_body_raw(self.up, rk, rlen)
        if rk == "chunked":
            raw = dechunk(raw)
        if rk == "close" or has_token(rheaders, "connection", "close"):
            self.close_up()
        return status, raw

    def hostile_list(self, req_bytes, method, target, query, headers, reqno, t0, client_close):
        st = self.state
        mode = st.list_mode
        prefix = query.get("prefix", [""])[0]
        token = query.get("continuation-token", [None])[0]
        outcome = f"list={mode}"
        if mode == "repeat-token":
            if token is not None and prefix in st.loop_pages:
                page = st.loop_pages[prefix]
            else:
                status, page = self.upstream_page(req_bytes, method)
                if status != 200:
                    self.send_answer(status, "Upstream", page)
                    st.count("list_mode_answers", self.log(reqno, method, target, outcome, t0))
                    return not client_close
                page = set_truncated(page, "walfs-loop")
                st.loop_pages[prefix] = page
            self.send_answer(200, "OK", page)
        elif mode.startswith("many:") or mode == "advancing":
            advancing = mode == "advancing"
            total = 1 << 62 if advancing else int(mode.split(":", 1)[1])
            start = int(token) if token else 0
            n = 1 if advancing else min(int(query.get("max-keys", ["1000"])[0] or 1000), 1000)
            end = min(total, start + n)
            parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult><Name>b</Name>'
                     f"<Prefix>{prefix}</Prefix><KeyCount>{end - start}</KeyCount>"
                     f"<MaxKeys>{n}</MaxKeys><IsTruncated>{'true' if end < total else 'false'}"
                     "</IsTruncated>"]
            if token:
                parts.append(f"<ContinuationToken>{token}</ContinuationToken>")
            if end < total:
                parts.append(f"<NextContinuationToken>{end}</NextContinuationToken>")
            for i in range(start, end):
                parts.append(f"<Contents><Key>{prefix}00000001{i >> 8:08X}{i & 255:08X}.lzo</Key>"
                             "<LastModified>2024-01-01T00:00:00.000Z</LastModified>"
                             '<ETag>"0123456789abcdef0123456789abcdef"</ETag><Size>123</Size>'
                             "<StorageClass>STANDARD</StorageClass></Contents>")
            parts.append("</ListBucketResult>")
            self.send_answer(200, "OK", "".join(parts).encode())
        elif mode == "bad-keys":
            status, page = self.upstream_page(req_bytes, method)
            if status == 200:
                bad = "".join(
                    f"<Contents><Key>{k}</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified>"
                    f'<ETag>"0123456789abcdef0123456789abcdef"</ETag><Size>{sz}</Size></Contents>'
                    for k, sz in ((f"{prefix}sub/000000010000000000000077.lzo", 10),
                                  ("elsewhere/000000010000000000000078.lzo", 10),
                                  (f"{prefix}000000010000000000000079.lzo", -5),
                                  ("", 10)))
                page = page.replace(b"</ListBucketResult>", bad.encode() + b"</ListBucketResult>")
            self.send_answer(status, "OK" if status == 200 else "Upstream", page)
        elif mode.startswith("huge-error:"):
            total = int(mode.split(":", 1)[1])
            start = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                     b"<Message>")
            head = ("HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\n"
                    f"Content-Length: {total}\r\n\r\n").encode()
            sent = 0
            try:
                self.client.sock.sendall(head + start)
                sent = len(start)
                chunk = b"x" * RELAY_CHUNK
                while sent < total:
                    piece = chunk[: total - sent]
                    self.client.sock.sendall(piece)
                    sent += len(piece)
            except OSError:
                pass
            st.add("huge_error_sent", sent)
            st.count("list_mode_answers", self.log(reqno, method, target, f"{outcome} sent {sent}", t0))
            close_clean(self.client.sock)
            return False
        elif mode == "echo-403":
            # credentials first, so that they are within what a client keeps of a message
            order = sorted(headers, key=lambda h: h[0] not in ("authorization", "x-amz-security-token"))
            echoed = "; ".join(f"{n}: {v}" for n, v in order)
            body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                    f"<Message>proxy refused the request {echoed}</Message></Error>").encode()
            self.send_answer(403, "Forbidden", body)
        elif mode == "echo-token-403":
            token = header(headers, "x-amz-security-token") or ""
            body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                    f"<Message>the token {token} has expired</Message></Error>").encode()
            self.send_answer(403, "Forbidden", body)
        elif mode == "bad-encoding":
            body = (b'<?xml version="1.0" encoding="SHIFT_JIS"?>\n<ListBucketResult>'
                    b"<Name>\x81\xff\x81\xff</Name></ListBucketResult>")
            self.send_answer(200, "OK", body)
        else:
            self.send_answer(500, "Internal Server Error", f"faultproxy: unknown list mode {mode}".encode(),
                             "text/plain")
        st.count("list_mode_answers", self.log(reqno, method, target, outcome, t0))
        return not client_close

    def relay(self, rk, rlen):
        """Copy the upstream's body to the client as it arrives; bytes relayed."""
        sock = self.client.sock
        up = self.up
        sent = 0
        if rk == "none":
            return 0
        if rk == "length":
            left = rlen
            while left > 0:
                piece = up.read_some(min(left, RELAY_CHUNK))
                if not piece:
                    raise ProtocolError("upstream EOF inside a body")
                sock.sendall(piece)
                left -= len(piece)
                sent += len(piece)
            return sent
        if rk == "chunked":
            raw = read_chunked_raw(up)
            sock.sendall(raw)
            return len(raw)
        while True:
            piece = up.read_some(RELAY_CHUNK)
            if not piece:
                return sent
            sock.sendall(piece)
            sent += len(piece)


def dechunk(raw):
    """The body of a raw chunked message body."""
    out, i = [], 0
    while True:
        j = raw.index(b"\r\n", i)
        size = int(raw[i:j].split(b";", 1)[0].strip(), 16)
        if size == 0:
            return b"".join(out)
        out.append(raw[j + 2 : j + 2 + size])
        i = j + 2 + size + 2


def set_truncated(page, token):
    """A ListBucketResult page made to say it is truncated, with this token."""
    import re
    page = re.sub(rb"<IsTruncated>[^<]*</IsTruncated>", b"<IsTruncated>true</IsTruncated>", page)
    page = re.sub(rb"<NextContinuationToken>[^<]*</NextContinuationToken>", b"", page)
    return page.replace(b"</ListBucketResult>",
                        b"<NextContinuationToken>" + token.encode() + b"</NextContinuationToken>"
                        b"</ListBucketResult>")


def parse_upstream(text):
    if "://" not in text:
        text = "http://" + text
    u = urllib.parse.urlsplit(text)
    if u.scheme != "http" or not u.hostname:
        raise SystemExit(f"faultproxy: --upstream must be http://HOST:PORT, not {text}")
    return u.hostname, u.port or 80


def main():
    ap = argparse.ArgumentParser(description="S3 reverse proxy that injects faults")
    ap.add_argument("--upstream", required=True, help="http://HOST:PORT of the real S3 server")
    ap.add_argument("--listen", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fault-rate", type=float, default=0.0)
    ap.add_argument("--kinds", default=",".join(DEFAULT_KINDS),
                    help="comma-separated fault kinds, chosen uniformly: " + ",".join(ALL_KINDS))
    ap.add_argument("--stall-seconds", type=float, default=8.0)
    ap.add_argument("--stats")
    ap.add_argument("--log")
    ap.add_argument("--control")
    ap.add_argument("--port-file")
    ap.add_argument("--list-mode", default="off", help="a hostile server's listings (see above)")
    ap.add_argument("--connect-timeout", type=float, default=5.0)
    ap.add_argument("--upstream-timeout", type=float, default=120.0)
    ap.add_argument("--client-idle", type=float, default=600.0)
    args = ap.parse_args()
    args.kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in args.kinds if k not in ALL_KINDS]
    if bad:
        ap.error(f"unknown fault kinds: {bad} (known: {', '.join(ALL_KINDS)})")
    if not 0.0 <= args.fault_rate <= 1.0:
        ap.error("--fault-rate must be in [0, 1]")
    args.up_host, args.up_port = parse_upstream(args.upstream)

    state = State(args)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", args.listen))
    srv.listen(128)
    port = srv.getsockname()[1]

    def on_usr1(_sig, _frm):
        threading.Thread(target=state.dump, daemon=True).start()

    def on_term(_sig, _frm):
        # The main thread may hold the lock right now (accept loop): do not wait forever.
        if state.lock.acquire(timeout=2):
            state.write_stats_locked()
        os._exit(0)

    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    with state.lock:
        state.reload_control()
        state.write_stats_locked()
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, args.port_file)
    print(f"faultproxy: 127.0.0.1:{port} -> {args.up_host}:{args.up_port}, seed {args.seed}, "
          f"rate {state.rate}, kinds {','.join(state.kinds)}, stall {args.stall_seconds}s",
          file=sys.stderr, flush=True)
    while True:
        try:
            s, _addr = srv.accept()
        except InterruptedError:
            continue
        with state.lock:
            state.conn_seq += 1
            cid = state.conn_seq
            state.c["connections"] += 1
        threading.Thread(target=Handler(state, args, s, cid).run, daemon=True).start()


if __name__ == "__main__":
    main()
