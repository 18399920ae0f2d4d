#!/usr/bin/env python3
"""A stand-in for the Hugging Face hub's file routes, for HubDownloadTests.

usage: mock_hub.py ROOT MODE   (MODE: good | corrupt | noetag | missing)

GET /{repo}/resolve/{revision}/{file} serves ROOT/{repo}/{file} the way the hub does:
  - *.safetensors (an LFS file): 302 to /lfs/{repo}/{file} with X-Linked-Etag = the
    SHA-256 of the content; the storage route sends the bytes without an ETag;
  - other files: 200 with ETag = the git blob SHA-1 ("blob <size>\\0" + content).
MODE corrupt sends one byte changed (the checksums stay the true ones), noetag sends no
checksum headers, missing answers 404. Prints "PORT <n>" once listening.
"""
import hashlib
import http.server
import os
import sys

ROOT, MODE = sys.argv[1], sys.argv[2]


class Hub(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def content(self, repo_file):
        path = os.path.join(ROOT, repo_file)
        if MODE == "missing" or not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            return f.read()

    def do_GET(self):
        parts = self.path.lstrip("/").split("/")
        if parts[0] == "lfs":
            data = self.content("/".join(parts[1:]))
            if data is None:
                return self.send_error(404)
            if MODE == "corrupt":
                data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if len(parts) < 5 or parts[2] != "resolve":
            return self.send_error(404)
        repo, name = "/".join(parts[:2]), "/".join(parts[4:])
        data = self.content(repo + "/" + name)
        if data is None:
            return self.send_error(404, "Entry not found")
        if name.endswith(".safetensors"):
            self.send_response(302)
            if MODE != "noetag":
                self.send_header("X-Linked-Etag", '"%s"' % hashlib.sha256(data).hexdigest())
            self.send_header("Location", "/lfs/%s/%s" % (repo, name))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if MODE == "corrupt":
            data = data[:-1] + bytes([data[-1] ^ 1])
        self.send_response(200)
        if MODE != "noetag":
            true = self.content(repo + "/" + name)  # the checksum of the true bytes
            blob = hashlib.sha1(b"blob %d\0" % len(true) + true).hexdigest()
            self.send_header("ETag", '"%s"' % blob)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
print("PORT %d" % server.server_address[1], flush=True)
server.serve_forever()
