#!/usr/bin/env python3
"""Benchmark (not a test): the figures issue 14 asks for, measured from outside as an attacker.

  bench/attack-figures.py [GATEHOUSE_BINARY]      (default: the release build)

Starts `gatehouse dev` under a 1,024-descriptor limit and measures:
  1. peak RSS while 64 sign-in posts with wrong passwords arrive at once (argon2 is ~19 MiB each);
  2. 1,100 half-sent requests: whether a whole request still gets an answer during the flood,
     and how many of them the server still holds open after 30 s.
Last line: `login64_peak_rss_mib=X login64_rss_growth_mib=Y halfsent_served_during=yes|no
halfsent_open_after_30s=N`.
"""
import http.client
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/gatehouse/target")),
    "release", "gatehouse")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def request(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    headers = r.getheaders()
    c.close()
    return (r.status, dict((k.lower(), v) for k, v in headers),
            [v for k, v in headers if k.lower() == "set-cookie"], data)


def main():
    port = free_port()
    data = tempfile.mkdtemp()
    env = dict(os.environ, GATEHOUSE_DEV_USER="dev", GATEHOUSE_DEV_PASSWORD="dev-password-1",
               GATEHOUSE_LOG="warn")

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    proc = subprocess.Popen([BIN, "dev", "--listen", f"127.0.0.1:{port}", "--data-dir", data],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            preexec_fn=limit, text=True)
    try:
        for line in proc.stdout:
            if "ready" in line:
                break
        threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()
        base = f"http://127.0.0.1:{port}"
        # A public client and one pending sign-in (its form is reused by every post).
        st, _, _, body = request(port, "POST", "/register", json.dumps({
            "redirect_uris": ["http://127.0.0.1/callback"], "token_endpoint_auth_method": "none",
            "application_type": "native"}), {"content-type": "application/json"})
        client_id = json.loads(body)["client_id"]
        q = urllib.parse.urlencode({
            "response_type": "code", "client_id": client_id,
            "redirect_uri": "http://127.0.0.1:5000/callback",
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256", "scope": "mcp:basic", "resource": base + "/mcp"})
        st, _, cookies, page = request(port, "GET", "/authorize?" + q)
        page = page.decode()
        pending = re.search(r'name="pending" value="([^"]+)"', page).group(1)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        cookie = "; ".join(c.split(";")[0] for c in cookies)
        idle = rss_kib(proc.pid, "VmRSS")
        peak = [idle]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_kib(proc.pid, "VmRSS"))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        statuses = []

        def post(i):
            form = urllib.parse.urlencode({"pending": pending, "csrf": csrf,
                                           "username": f"user{i}", "password": "wrong"})
            try:
                st, _, _, _ = request(port, "POST", "/login", form, {
                    "content-type": "application/x-www-form-urlencoded", "cookie": cookie})
                statuses.append(st)
            except Exception as e:  # noqa: BLE001 - a refused post is a figure too
                statuses.append(str(type(e).__name__))

        threads = [threading.Thread(target=post, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        sampler.join()
        counts = {s: statuses.count(s) for s in set(statuses)}
        print(f"64 concurrent sign-in posts: statuses {counts}; RSS idle {idle / 1024:.0f} MiB, "
              f"peak {peak[0] / 1024:.0f} MiB", file=sys.stderr)

        # 1,100 half-sent requests under the 1,024-descriptor limit.
        held = []
        for _ in range(1100):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=2)
                s.sendall(b"GET /.well-known/oauth-authorization-server HTTP/1.1\r\nHost: x\r\n")
                held.append(s)
            except OSError:
                pass
        try:
            st, _, _, _ = request(port, "GET", "/.well-known/oauth-authorization-server")
            served = "yes" if st == 200 else f"no({st})"
        except Exception as e:  # noqa: BLE001
            served = f"no({type(e).__name__})"
        time.sleep(30)
        still = 0
        for s in held:
            s.settimeout(0.05)
            try:
                if s.recv(512):
                    # An answer (e.g. 408/503) then EOF: read on until closed.
                    while s.recv(512):
                        pass
            except (socket.timeout, BlockingIOError):
                still += 1
            except OSError:
                pass
            s.close()
        print(f"1,100 half-sent requests: {len(held)} connected; a whole request served during "
              f"the flood: {served}; still open after 30 s: {still}", file=sys.stderr)
        print(f"login64_peak_rss_mib={peak[0] / 1024:.0f} "
              f"login64_rss_growth_mib={(peak[0] - idle) / 1024:.0f} "
              f"halfsent_served_during={served} halfsent_open_after_30s={still}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
