#!/usr/bin/env python3
"""s3tool: a small, independent S3 client for the walfs test suite.

Python 3.11 standard library only (http.client, hmac, hashlib, xml.etree).
It has its own AWS Signature Version 4 implementation and uses path-style
addressing (http://host:port/bucket/key), so it shares no code with the C
client under test and can serve as the suite's reference.

Environment:
  S3_ENDPOINT            e.g. http://127.0.0.1:7480   (required)
  AWS_ACCESS_KEY_ID      access key                   (required)
  AWS_SECRET_ACCESS_KEY  secret key                   (required)
  AWS_REGION             signing region, default us-east-1
  S3TOOL_TIMEOUT         socket timeout in seconds, default 30
  S3TOOL_CLOCK_OFFSET    seconds added to the signing clock, default 0
                         (to provoke RequestTimeTooSkewed on purpose)

Subcommands:
  mb BUCKET                      create a bucket
  rb BUCKET                      delete every object (and abort multipart
                                 uploads), then the bucket
  put [-m NAME=VALUE]... [-t CONTENT_TYPE] BUCKET KEY FILE
                                 upload FILE ("-" = stdin); -m adds
                                 x-amz-meta-NAME: VALUE
  get [-r FIRST-LAST] BUCKET KEY [FILE]
                                 download to FILE (default stdout); -r sends
                                 Range: bytes=FIRST-LAST
  head BUCKET KEY                print size=, etag=, last-modified=,
                                 content-type= and x-amz-meta-*= lines
  ls [-n PAGE_SIZE] BUCKET [PREFIX]
                                 ListObjectsV2 (all pages): key<TAB>size
  lsb                            list buckets, one name a line
  rm BUCKET KEY                  delete an object
  sync-up DIR BUCKET             upload every file under DIR, key = path
                                 relative to DIR ('/'-separated); a
                                 MANIFEST.txt directly in DIR is skipped

Exit status: 0 ok; 1 S3 error (HTTP status >= 300, code and message on
stderr); 2 usage error; 3 not found (get/head, HTTP 404); 4 connection or
local I/O failure.
"""

import argparse
import datetime
import hashlib
import hmac
import http.client
import os
import socket
import sys
import urllib.parse
import xml.etree.ElementTree as ET

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
CHUNK = 1 << 20

EXIT_S3 = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_IO = 4


class S3Error(Exception):
    def __init__(self, status, code, message, method, path):
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code
        self.message = message
        self.method = method
        self.path = path

    def __str__(self):
        msg = f"HTTP {self.status} {self.code}"
        if self.message:
            msg += f": {self.message}"
        return f"{msg} ({self.method} {self.path})"


class ConnError(Exception):
    pass


def uri_encode(s, keep_slash):
    """RFC 3986 percent-encoding as SigV4 wants it: only A-Z a-z 0-9 - _ . ~
    stay literal (and '/' in the path)."""
    safe = "-_.~/" if keep_slash else "-_.~"
    return urllib.parse.quote(s, safe=safe)


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def hmac_sha256(key, msg):
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


class S3Client:
    def __init__(self, endpoint, access_key, secret_key, region="us-east-1",
                 timeout=30.0, clock_offset=0.0):
        u = urllib.parse.urlsplit(endpoint)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"bad S3_ENDPOINT {endpoint!r}")
        self.scheme = u.scheme
        self.hostname = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        default_port = 443 if u.scheme == "https" else 80
        self.host_header = self.hostname if self.port == default_port else f"{self.hostname}:{self.port}"
        self.base_path = u.path.rstrip("/")
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.timeout = timeout
        self.clock_offset = clock_offset
        self.conn = None

    # ---- connection ---------------------------------------------------
    def _connect(self):
        if self.conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            self.conn = cls(self.hostname, self.port, timeout=self.timeout)
        return self.conn

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # ---- signing ------------------------------------------------------
    def _sign(self, method, path, query, headers, payload_hash):
        now = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=self.clock_offset)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        date = now.strftime("%Y%m%d")
        headers["host"] = self.host_header
        headers["x-amz-date"] = amz_date
        headers["x-amz-content-sha256"] = payload_hash

        canon_query = "&".join(
            f"{uri_encode(k, False)}={uri_encode(v, False)}"
            for k, v in sorted(query, key=lambda kv: (uri_encode(kv[0], False), uri_encode(kv[1], False)))
        )
        signed = sorted(k.lower() for k in headers)
        canon_headers = "".join(
            f"{k}:{' '.join(str(headers[k]).strip().split())}\n"
            for k in signed
        )
        signed_headers = ";".join(signed)
        canon_request = "\n".join([
            method,
            uri_encode(path, True),
            canon_query,
            canon_headers,
            signed_headers,
            payload_hash,
        ])
        scope = f"{date}/{self.region}/s3/aws4_request"
        string_to_sign = "\n".join([
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            sha256_hex(canon_request.encode("utf-8")),
        ])
        k = hmac_sha256(("AWS4" + self.secret_key).encode("utf-8"), date)
        k = hmac_sha256(k, self.region)
        k = hmac_sha256(k, "s3")
        k = hmac_sha256(k, "aws4_request")
        signature = hmac.new(k, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
            f"SignedHeaders={signed_headers}, Signature={signature}"
        )

    # ---- one request --------------------------------------------------
    def request(self, method, bucket=None, key=None, query=(), headers=None,
                body=None, payload_hash=None, content_length=None, sink=None,
                ok=(200, 204, 206)):
        """Send one signed request.  body: bytes or a seekable binary file.
        sink: if given, a binary file the response body is streamed into
        (only when the status is in ok).  Returns (status, headers, body)."""
        path = self.base_path + "/"
        if bucket:
            path += bucket
            if key is not None:
                path += "/" + key
        query = list(query)
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        if body is None:
            payload_hash = payload_hash or EMPTY_SHA256
            if method in ("PUT", "POST"):
                hdrs["content-length"] = "0"
        elif isinstance(body, (bytes, bytearray)):
            payload_hash = payload_hash or sha256_hex(body)
            hdrs["content-length"] = str(len(body))
        else:
            if payload_hash is None or content_length is None:
                raise ValueError("file body needs payload_hash and content_length")
            hdrs["content-length"] = str(content_length)
        self._sign(method, path, query, hdrs, payload_hash)

        url = uri_encode(path, True)
        if query:
            url += "?" + "&".join(
                f"{uri_encode(k, False)}={uri_encode(v, False)}" if v != "" else uri_encode(k, False)
                for k, v in query
            )

        for attempt in (1, 2):
            if not isinstance(body, (bytes, bytearray, type(None))):
                body.seek(0)
            try:
                conn = self._connect()
                conn.putrequest(method, url, skip_host=True, skip_accept_encoding=True)
                for k, v in hdrs.items():
                    conn.putheader(k, v)
                conn.endheaders()
                if body is not None:
                    if isinstance(body, (bytes, bytearray)):
                        conn.send(body)
                    else:
                        while True:
                            chunk = body.read(CHUNK)
                            if not chunk:
                                break
                            conn.send(chunk)
                resp = conn.getresponse()
                rheaders = {k.lower(): v for k, v in resp.getheaders()}
                if resp.status in ok and sink is not None:
                    while True:
                        chunk = resp.read(CHUNK)
                        if not chunk:
                            break
                        sink.write(chunk)
                    data = b""
                else:
                    data = resp.read()
                if resp.getheader("connection", "").lower() == "close":
                    self.close()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                # A reused keep-alive connection that the server closed: retry
                # once on a fresh connection.
                self.close()
                if attempt == 2:
                    raise ConnError(f"{method} {url}: {e}") from e
            except (OSError, http.client.HTTPException) as e:
                self.close()
                if isinstance(e, socket.timeout) or "timed out" in str(e):
                    raise ConnError(f"{method} {url}: timed out after {self.timeout:g} s") from e
                raise ConnError(f"{method} {url}: {e}") from e

        if resp.status not in ok:
            code, message = parse_error(data)
            if not code:
                code = {403: "Forbidden", 404: "NotFound"}.get(resp.status, resp.reason or "Error")
            raise S3Error(resp.status, code, message, method, url)
        return resp.status, rheaders, data


def parse_error(data):
    if not data:
        return "", ""
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        return "", data[:200].decode("utf-8", "replace").strip()
    code = message = ""
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "Code" and not code:
            code = (el.text or "").strip()
        elif tag == "Message" and not message:
            message = (el.text or "").strip()
    return code, message


def xml_children(root, name):
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == name:
            yield el


def xml_text(el, name, default=""):
    for child in el:
        if child.tag.rsplit("}", 1)[-1] == name:
            return child.text or ""
    return default


# ---- operations -------------------------------------------------------

def list_objects(c, bucket, prefix="", max_keys=None):
    token = None
    while True:
        q = [("list-type", "2")]
        if max_keys:
            q.append(("max-keys", str(max_keys)))
        if prefix:
            q.append(("prefix", prefix))
        if token:
            q.append(("continuation-token", token))
        _, _, data = c.request("GET", bucket, query=q)
        root = ET.fromstring(data)
        for el in xml_children(root, "Contents"):
            yield xml_text(el, "Key"), int(xml_text(el, "Size", "0"))
        truncated = xml_text(root, "IsTruncated", "false").lower() == "true"
        token = xml_text(root, "NextContinuationToken")
        if not truncated:
            return
        if not token:
            raise S3Error(500, "BadListing", "IsTruncated without NextContinuationToken",
                          "GET", bucket)


def list_uploads(c, bucket):
    _, _, data = c.request("GET", bucket, query=[("uploads", "")])
    root = ET.fromstring(data)
    for el in xml_children(root, "Upload"):
        yield xml_text(el, "Key"), xml_text(el, "UploadId")


def put_file(c, bucket, key, path, meta=(), content_type=None):
    headers = {}
    for name, value in meta:
        headers["x-amz-meta-" + name.lower()] = value
    if content_type:
        headers["content-type"] = content_type
    if path == "-":
        body = sys.stdin.buffer.read()
        c.request("PUT", bucket, key, headers=headers, body=body)
        return len(body)
    with open(path, "rb") as f:
        h = hashlib.sha256()
        n = 0
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        c.request("PUT", bucket, key, headers=headers, body=f,
                  payload_hash=h.hexdigest(), content_length=n)
    return n


def cmd_mb(c, a):
    c.request("PUT", a.bucket)


def cmd_rb(c, a):
    for key, upload_id in list(list_uploads(c, a.bucket)):
        c.request("DELETE", a.bucket, key, query=[("uploadId", upload_id)])
    while True:
        keys = [k for k, _ in list_objects(c, a.bucket)]
        if not keys:
            break
        for k in keys:
            c.request("DELETE", a.bucket, k)
    c.request("DELETE", a.bucket)


def cmd_put(c, a):
    meta = []
    for m in a.meta or []:
        if "=" not in m:
            usage_error(f"-m wants NAME=VALUE, got {m!r}")
        meta.append(tuple(m.split("=", 1)))
    put_file(c, a.bucket, a.key, a.file, meta, a.content_type)


def cmd_get(c, a):
    headers = {}
    if a.range:
        headers["range"] = "bytes=" + a.range
    if a.file and a.file != "-":
        tmp = a.file + ".s3tool-part"
        try:
            with open(tmp, "wb") as f:
                c.request("GET", a.bucket, a.key, headers=headers, sink=f)
            os.replace(tmp, a.file)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    else:
        out = sys.stdout.buffer
        c.request("GET", a.bucket, a.key, headers=headers, sink=out)
        out.flush()


def cmd_head(c, a):
    _, h, _ = c.request("HEAD", a.bucket, a.key)
    print(f"size={h.get('content-length', '')}")
    etag = h.get("etag", "").strip('"')
    print(f"etag={etag}")
    print(f"last-modified={h.get('last-modified', '')}")
    if "content-type" in h:
        print(f"content-type={h['content-type']}")
    for k in sorted(h):
        if k.startswith("x-amz-meta-"):
            print(f"{k}={h[k]}")


def cmd_ls(c, a):
    out = sys.stdout
    for key, size in list_objects(c, a.bucket, a.prefix or "", a.max_keys):
        out.write(f"{key}\t{size}\n")


def cmd_lsb(c, a):
    _, _, data = c.request("GET")
    root = ET.fromstring(data)
    for el in xml_children(root, "Bucket"):
        print(xml_text(el, "Name"))


def cmd_rm(c, a):
    c.request("DELETE", a.bucket, a.key)


def cmd_sync_up(c, a):
    top = os.path.abspath(a.dir)
    if not os.path.isdir(top):
        raise ConnError(f"{a.dir}: not a directory")
    n = total = 0
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, top).replace(os.sep, "/")
            if rel == "MANIFEST.txt" or not os.path.isfile(full):
                continue
            total += put_file(c, a.bucket, rel, full)
            n += 1
    print(f"uploaded {n} files, {total} bytes", file=sys.stderr)


def usage_error(msg):
    print(f"s3tool: {msg}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        usage_error(message)


def main(argv):
    p = Parser(prog="s3tool.py", description="independent SigV4 S3 client for the walfs tests")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("mb"); s.add_argument("bucket")
    s = sub.add_parser("rb"); s.add_argument("bucket")
    s = sub.add_parser("put")
    s.add_argument("-m", "--meta", action="append", metavar="NAME=VALUE")
    s.add_argument("-t", "--content-type")
    s.add_argument("bucket"); s.add_argument("key"); s.add_argument("file")
    s = sub.add_parser("get")
    s.add_argument("-r", "--range", metavar="FIRST-LAST")
    s.add_argument("bucket"); s.add_argument("key"); s.add_argument("file", nargs="?")
    s = sub.add_parser("head"); s.add_argument("bucket"); s.add_argument("key")
    s = sub.add_parser("ls")
    s.add_argument("-n", "--max-keys", type=int, help="page size (to exercise continuation)")
    s.add_argument("bucket"); s.add_argument("prefix", nargs="?")
    sub.add_parser("lsb")
    s = sub.add_parser("rm"); s.add_argument("bucket"); s.add_argument("key")
    s = sub.add_parser("sync-up"); s.add_argument("dir"); s.add_argument("bucket")
    a = p.parse_args(argv)

    env = os.environ
    missing = [v for v in ("S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not env.get(v)]
    if missing:
        usage_error("missing environment: " + " ".join(missing))
    try:
        c = S3Client(env["S3_ENDPOINT"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                     env.get("AWS_REGION") or "us-east-1",
                     float(env.get("S3TOOL_TIMEOUT") or 30),
                     float(env.get("S3TOOL_CLOCK_OFFSET") or 0))
    except ValueError as e:
        usage_error(str(e))

    fn = {"mb": cmd_mb, "rb": cmd_rb, "put": cmd_put, "get": cmd_get, "head": cmd_head,
          "ls": cmd_ls, "lsb": cmd_lsb, "rm": cmd_rm, "sync-up": cmd_sync_up}[a.cmd]
    try:
        fn(c, a)
    except S3Error as e:
        print(f"s3tool {a.cmd}: {e}", file=sys.stderr)
        return EXIT_NOT_FOUND if e.status == 404 and a.cmd in ("get", "head") else EXIT_S3
    except ConnError as e:
        print(f"s3tool {a.cmd}: {e}", file=sys.stderr)
        return EXIT_IO
    except ET.ParseError as e:
        print(f"s3tool {a.cmd}: bad XML in response: {e}", file=sys.stderr)
        return EXIT_S3
    except OSError as e:
        print(f"s3tool {a.cmd}: {e}", file=sys.stderr)
        return EXIT_IO
    finally:
        c.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
