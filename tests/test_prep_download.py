"""download against a local HTTP server with Range support: fresh, skip, resume, corrupt, offline."""

from __future__ import annotations

import gzip
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dataset_prep.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "prep"


class Server:
    """Serves ``files`` (URL path -> bytes) and records each request's path and Range header."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def published() -> dict[str, bytes]:
    """The 2018 All_Beauty fixture at the paths the 2018 release publishes."""
    return {
        "/categoryFilesSmall/All_Beauty.csv": (FIXTURES / "2018" / "All_Beauty.csv").read_bytes(),
        "/metaFiles2/meta_All_Beauty.json.gz": gzip.compress(
            (FIXTURES / "2018" / "meta_All_Beauty.json").read_bytes() * 200
        ),
    }


@pytest.fixture
def server(published: dict[str, bytes]) -> Iterator[Server]:
    srv = Server(published)
    yield srv
    srv.close()


def download(server_url: str, out: Path, *extra: str) -> int:
    return main(
        [
            "download",
            "--release",
            "2018",
            "--category",
            "All_Beauty",
            "--output",
            str(out),
            "--base-url",
            server_url,
            *extra,
        ]
    )


def test_download_then_skip(tmp_path: Path, server: Server, published: dict[str, bytes]) -> None:
    assert download(server.url, tmp_path) == 0
    folder = tmp_path / "2018"
    assert (folder / "All_Beauty.csv").read_bytes() == published["/categoryFilesSmall/All_Beauty.csv"]
    assert (folder / "meta_All_Beauty.json.gz").read_bytes() == published[
        "/metaFiles2/meta_All_Beauty.json.gz"
    ]
    assert not list(folder.glob("*.part"))
    before = len(server.requests)
    assert download(server.url, tmp_path) == 0
    assert len(server.requests) == before  # complete files are not fetched again
    # The downloaded folder converts as is.
    assert (
        main(
            [
                "convert",
                "--category",
                "2018:All_Beauty",
                "--input",
                str(tmp_path),
                "--output",
                str(tmp_path / "out"),
                "--min-user-inter",
                "1",
                "--min-item-inter",
                "1",
            ]
        )
        == 0
    )


def test_resume_with_range_request(tmp_path: Path, server: Server, published: dict[str, bytes]) -> None:
    body = published["/metaFiles2/meta_All_Beauty.json.gz"]
    folder = tmp_path / "2018"
    folder.mkdir()
    (folder / "meta_All_Beauty.json.gz.part").write_bytes(body[:100])
    assert download(server.url, tmp_path) == 0
    assert ("/metaFiles2/meta_All_Beauty.json.gz", "bytes=100-") in server.requests
    assert (folder / "meta_All_Beauty.json.gz").read_bytes() == body
    assert not (folder / "meta_All_Beauty.json.gz.part").exists()


def test_part_file_already_complete(tmp_path: Path, server: Server, published: dict[str, bytes]) -> None:
    body = published["/metaFiles2/meta_All_Beauty.json.gz"]
    folder = tmp_path / "2018"
    folder.mkdir()
    (folder / "meta_All_Beauty.json.gz.part").write_bytes(body)  # the server answers 416
    assert download(server.url, tmp_path) == 0
    assert (folder / "meta_All_Beauty.json.gz").read_bytes() == body


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_bad_gzip_fails_verification(
    tmp_path: Path, published: dict[str, bytes], capsys, damage: str
) -> None:
    body = published["/metaFiles2/meta_All_Beauty.json.gz"]
    if damage == "truncated":
        body = body[: len(body) // 2]
    else:  # flip bytes in the CRC trailer
        body = body[:-8] + bytes(b ^ 0xFF for b in body[-8:-4]) + body[-4:]
    srv = Server({**published, "/metaFiles2/meta_All_Beauty.json.gz": body})
    try:
        assert download(srv.url, tmp_path) == 2
    finally:
        srv.close()
    err = capsys.readouterr().err
    assert "meta_All_Beauty.json.gz" in err and "failed verification" in err
    assert not (tmp_path / "2018" / "meta_All_Beauty.json.gz").exists()
    assert not (tmp_path / "2018" / "meta_All_Beauty.json.gz.part").exists()
    assert (tmp_path / "2018" / "All_Beauty.csv").exists()  # the good file before it is kept


def test_offline_is_a_clear_error(tmp_path: Path, capsys) -> None:
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert download(f"http://127.0.0.1:{port}/", tmp_path, "--timeout", "5") == 2
    err = capsys.readouterr().err
    assert "cannot reach" in err and "offline" in err and "Traceback" not in err


def test_missing_remote_file(tmp_path: Path, server: Server, capsys) -> None:
    assert (
        main(["download", "--category", "2018:Books", "--output", str(tmp_path), "--base-url", server.url])
        == 2
    )
    assert "HTTP 404" in capsys.readouterr().err
