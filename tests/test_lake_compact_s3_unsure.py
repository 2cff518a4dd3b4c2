"""A compaction on S3 whose manifest PUT fails with an answer that does not say whether it was
applied (a 500, a timeout): S3 may apply it after the client gave up. The files the manifest
names must then still be there.

A loopback proxy in front of moto's server answers 500 to every PUT of the manifest and
holds the first one, which the test then lets through, as the store would apply it late."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import pytest
from motos3 import moto_s3, s3_client
from test_lake import T0, ev
from test_lake_compact import winners

import kirim_events as ke

MANIFEST = "_state/compaction/events/type=message.created.json"


class _Proxy(BaseHTTPRequestHandler):
    upstream: tuple[str, int]
    held: list[tuple[str, dict[str, str], bytes]]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size)
                self.rfile.readline()
                if size == 0:
                    return out
                out += chunk
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self) -> None:
        body = self._body()
        headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
        url = urlparse(self.path)
        completes = "uploadId=" in url.query and self.command != "PUT"
        if completes and unquote(url.path).endswith(MANIFEST):
            # pyarrow writes an object as a multipart upload: its completion (POST) is the
            # write; that (and the abort pyarrow sends on failure) is held, answered 500
            if self.command == "POST" and not self.held:
                self.held.append((self.path, headers, body))
            self.send_response(500)
            error = b"<Error><Code>InternalError</Code><Message>try again</Message></Error>"
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            self.wfile.write(error)
            return
        connection = http.client.HTTPConnection(*self.upstream, timeout=30)
        if body or "Content-Length" in headers:
            headers["Content-Length"] = str(len(body))
        connection.request(self.command, self.path, body=body, headers=headers)
        answer = connection.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(key, value)
        length = answer.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        connection.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


Held = list[tuple[str, dict[str, str], bytes]]


@pytest.fixture
def unsure() -> Iterator[tuple[dict[str, str], dict[str, str], Held]]:
    """(the proxy's environment, moto's own, the manifest PUTs held)."""
    with moto_s3() as (env, _server):
        target = urlparse(env["AWS_ENDPOINT_URL"])
        held: Held = []
        upstream = (target.hostname, target.port)
        handler = type("Handler", (_Proxy,), {"upstream": upstream, "held": held})
        proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=proxy.serve_forever, daemon=True)
        thread.start()
        try:
            yield {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.server_port}"}, env, held
        finally:
            proxy.shutdown()
            proxy.server_close()


def test_a_manifest_put_that_failed_unsure_keeps_the_files_it_names(
    unsure: tuple[dict[str, str], dict[str, str], Held],
) -> None:
    """The run deletes the merged files it wrote when its manifest's PUT fails
    (``_Group._drop_unpublished``), and the manifest on S3 is still the old one; the store
    applies the PUT after all. The manifest then lists files no longer there, so it vouches
    for none of those partitions: readers count every file there, deduplicated, and the next
    run merges them. Nothing is lost (a manifest trusted as it was, the events of the
    partitions it rewrote would be: the files it replaced counted for nothing)."""
    via_proxy, direct, held = unsure
    uri = "s3://lake/unsure"
    lake = ke.Lake(uri, env=via_proxy)
    lake.write_events([ev("a", payload="first"), ev("b", occurred=T0 + timedelta(days=1))])
    lake.write_events([ev("a", payload="copy", received=T0 + timedelta(hours=1))])
    # a later copy alone in its day: that day's merged output is empty (the manifest lists
    # no file there and all of its files as replaced), the copy kept being on May 1st
    lake.write_events(
        [ev("a", payload="late", received=T0 + timedelta(hours=2), occurred=T0 + timedelta(2))]
    )
    with pytest.raises(ke.StorageError):
        lake.compact()
    assert held, "the manifest's PUT did not come through the proxy"
    pages = s3_client(direct).get_paginator("list_objects_v2").paginate(Bucket="lake")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert not [k for k in keys if "/c-" in k]  # the run deleted the files it had written
    path, headers, body = held[0]
    target = urlparse(direct["AWS_ENDPOINT_URL"])
    late = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
    late.request("POST", path, body=body, headers={**headers, "Content-Length": str(len(body))})
    assert late.getresponse().status == 200  # the store applies the write late
    late.close()
    assert s3_client(direct).head_object(Bucket="lake", Key=f"unsure/{MANIFEST}")
    reader = ke.Lake(uri, env=direct)
    assert winners(reader) == {"a": "first", "b": ev("b").payload}
    reader.compact()
    assert winners(reader) == {"a": "first", "b": ev("b").payload}
    assert reader.stats()["clean"].all()
