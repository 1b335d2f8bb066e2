"""download against a local HTTP server with Range support: fresh, skip, resume, corrupt, offline, and
servers that misbehave (no length, cut bodies, HTML pages, ranges ignored or refused)."""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import SLICES

from dataset_prep.cli import main
from dataset_prep.registry import RELEASES

FIXTURES = Path(__file__).parent / "fixtures" / "prep"


class QuietServer(ThreadingHTTPServer):
    """Keeps the server side's own errors (a client that hangs up early: BrokenPipe) off stderr, where the
    tests look for srt-prep's messages."""

    def handle_error(self, request: object, client_address: object) -> None:
        pass


class Server:
    """Serves ``files`` (URL path -> bytes) and records each request's path and Range header.

    ``modes`` (URL path -> name) makes a path misbehave like real servers and proxies do:
    ``no-length`` (no Content-Length, the body ends when the connection closes), ``short`` (announces the
    whole length, sends half), ``chunked-cut`` (chunked encoding, cut before the last chunk),
    ``range-200`` (answers a Range request with 200 and the whole file), ``range-206-from-0`` (answers
    206 but sends the whole file from byte 0), ``range-206-elsewhere`` (206 from another offset),
    ``partial-always`` (206 with the second half of the file, even to a request without a range)."""

    def __init__(self, files: dict[str, bytes], modes: dict[str, str] | None = None) -> None:
        self.files = files
        self.modes = modes or {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                mode = server.modes.get(self.path, "")
                start = 0
                if self.headers.get("Range") and mode != "range-200":
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    start = {"range-206-from-0": 0, "range-206-elsewhere": start // 2}.get(mode, start)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                elif mode == "partial-always":  # a broken proxy: a part of the file to a plain request
                    start = len(body) // 2
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                data = body[start:]
                if mode == "chunked-cut":
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    half = data[: len(data) // 2]
                    self.wfile.write(f"{len(half):x}\r\n".encode() + half + b"\r\n")
                    return  # the connection closes without the last (empty) chunk
                if mode != "no-length":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if mode == "short" else data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
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


# Bad downloads, fed the real Magazine_Subscriptions slice (2018, tests/data) through the local server.
MAGAZINE = SLICES / "amazon2018-magazine-subscriptions"
CSV = "/categoryFilesSmall/Magazine_Subscriptions.csv"
META = "/metaFiles2/meta_Magazine_Subscriptions.json.gz"
HTML = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please log in</body></html>\n"


@pytest.fixture
def mag_files() -> dict[str, bytes]:
    """The real 2018 Magazine_Subscriptions files at their published paths (the CSV is plain there)."""
    return {
        CSV: gzip.decompress((MAGAZINE / "Magazine_Subscriptions.csv.gz").read_bytes()),
        META: (MAGAZINE / "meta_Magazine_Subscriptions.json.gz").read_bytes(),
    }


@contextmanager
def serving(files: dict[str, bytes], modes: dict[str, str] | None = None) -> Iterator[Server]:
    srv = Server(files, modes)
    try:
        yield srv
    finally:
        srv.close()


def get_magazine(url: str, out: Path) -> int:
    args = ["download", "--category", "2018:Magazine_Subscriptions", "--output", str(out)]
    return main([*args, "--base-url", url, "--timeout", "10"])


def only_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("srt-prep: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    return lines[0]


def test_log_records_size_and_sha256_and_unrecorded_files_are_fetched_again(
    tmp_path: Path, mag_files: dict[str, bytes], capsys
) -> None:
    folder = tmp_path / "2018"
    folder.mkdir()
    (folder / "Magazine_Subscriptions.csv").write_bytes(mag_files[CSV][:1000])  # "finished" by an old version
    with serving(mag_files) as srv:
        assert get_magazine(srv.url, tmp_path) == 0
        assert (folder / "Magazine_Subscriptions.csv").read_bytes() == mag_files[CSV]
        log = json.loads((folder / "downloads.json").read_text())["files"]
        for path, body in mag_files.items():
            record = log[path.rsplit("/", 1)[1]]
            assert record["size"] == len(body) and record["sha256"] == hashlib.sha256(body).hexdigest()
            assert record["url"] == srv.url + path[1:] and record["length_checked"] is True
        before = len(srv.requests)
        assert get_magazine(srv.url, tmp_path) == 0
        assert len(srv.requests) == before
        (folder / "Magazine_Subscriptions.csv").write_bytes(mag_files[CSV] + b"x,y,5.0,1\n")  # changed since
        assert get_magazine(srv.url, tmp_path) == 0
        assert srv.requests[before:] == [(CSV, None)]
    assert (folder / "Magazine_Subscriptions.csv").read_bytes() == mag_files[CSV]
    assert "already downloaded and verified, skipped" in capsys.readouterr().err


def test_csv_cut_short_without_a_length_header(tmp_path: Path, mag_files: dict[str, bytes], capsys) -> None:
    cut = mag_files[CSV][: len(mag_files[CSV]) // 2]
    assert not cut.endswith(b"\n")
    with serving({**mag_files, CSV: cut}, {CSV: "no-length"}) as srv:
        assert get_magazine(srv.url, tmp_path) == 2
    line = only_error_line(capsys.readouterr().err)
    assert line == (
        f"srt-prep: error: {tmp_path}/2018/Magazine_Subscriptions.csv: downloaded file failed verification "
        "(ends in the middle of a line (cut short?)); deleted, rerun"
    )
    assert not list((tmp_path / "2018").iterdir())  # no file, no .part, no log entry
    # The whole file without a length header: accepted on its format, recorded as such.
    with serving(mag_files, {CSV: "no-length"}) as srv:
        assert get_magazine(srv.url, tmp_path) == 0
    assert "format only: the server announced no length" in capsys.readouterr().err
    log = json.loads((tmp_path / "2018" / "downloads.json").read_text())["files"]
    assert log["Magazine_Subscriptions.csv"]["length_checked"] is False
    assert log["meta_Magazine_Subscriptions.json.gz"]["length_checked"] is True


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (CSV, HTML, "is an HTML page, not a data file (starts '<!DOCTYPE html>')"),
        (META, HTML, "not a gzip file but an HTML page (starts b'<!DOCTYPE html>"),
        (CSV, b'{"user_id": "A1", "parent_asin": "B1", "rating": 5, "timestamp": 1}\n', "line 1"),
        (META, gzip.compress(b"B00005N7P0,AH2IFH762VY5U,5.0,1005177600\n"), "line 1"),
    ],
)
def test_wrong_content_fails_verification(
    tmp_path: Path, mag_files: dict[str, bytes], capsys, path: str, body: bytes, message: str
) -> None:
    with serving({**mag_files, path: body}) as srv:
        assert get_magazine(srv.url, tmp_path) == 2
    line = only_error_line(capsys.readouterr().err)
    assert path.rsplit("/", 1)[1] + ": downloaded file failed verification" in line and message in line
    assert "not the release's record layout" in line or "HTML" in line
    assert not (tmp_path / "2018" / path.rsplit("/", 1)[1]).exists()


def test_part_larger_than_the_file_starts_again(tmp_path: Path, mag_files: dict[str, bytes], capsys) -> None:
    folder = tmp_path / "2018"
    folder.mkdir()
    (folder / "meta_Magazine_Subscriptions.json.gz.part").write_bytes(mag_files[META] + b"\0junk" * 100)
    with serving(mag_files) as srv:
        assert get_magazine(srv.url, tmp_path) == 0
        metas = [r for r in srv.requests if r[0] == META]
    assert metas == [(META, f"bytes={len(mag_files[META]) + 500}-"), (META, None)]  # 416, then from 0
    assert (folder / "meta_Magazine_Subscriptions.json.gz").read_bytes() == mag_files[META]
    assert f"is {len(mag_files[META]) + 500} bytes, the file on the server {len(mag_files[META])} bytes" in (
        capsys.readouterr().err
    )


def test_complete_part_is_not_fetched_again(tmp_path: Path, mag_files: dict[str, bytes]) -> None:
    folder = tmp_path / "2018"
    folder.mkdir()
    (folder / "meta_Magazine_Subscriptions.json.gz.part").write_bytes(mag_files[META])
    with serving(mag_files) as srv:
        assert get_magazine(srv.url, tmp_path) == 0
        assert [r for r in srv.requests if r[0] == META] == [(META, f"bytes={len(mag_files[META])}-")]
    assert (folder / "meta_Magazine_Subscriptions.json.gz").read_bytes() == mag_files[META]


@pytest.mark.parametrize("mode", ["range-200", "range-206-from-0", "range-206-elsewhere"])
def test_resume_the_server_did_not_honour_restarts(
    tmp_path: Path, mag_files: dict[str, bytes], capsys, mode: str
) -> None:
    folder = tmp_path / "2018"
    folder.mkdir()
    (folder / "meta_Magazine_Subscriptions.json.gz.part").write_bytes(mag_files[META][:5000])
    with serving(mag_files, {META: mode}) as srv:
        assert get_magazine(srv.url, tmp_path) == 0
        metas = [r for r in srv.requests if r[0] == META]
    assert (folder / "meta_Magazine_Subscriptions.json.gz").read_bytes() == mag_files[META]
    expected = [(META, "bytes=5000-")] + ([(META, None)] if mode == "range-206-elsewhere" else [])
    assert metas == expected
    assert "starting again" in capsys.readouterr().err


def test_partial_body_to_a_plain_request(tmp_path: Path, mag_files: dict[str, bytes], capsys) -> None:
    with serving(mag_files, {META: "partial-always"}) as srv:
        assert get_magazine(srv.url, tmp_path) == 2
        assert [r for r in srv.requests if r[0] == META] == [(META, None)]  # refused, not retried forever
    assert only_error_line(capsys.readouterr().err) == (
        f"srt-prep: error: download failed: the server sent a partial body without a range for {srv.url}"
        "metaFiles2/meta_Magazine_Subscriptions.json.gz"
    )
    assert not (tmp_path / "2018" / "meta_Magazine_Subscriptions.json.gz").exists()


@pytest.mark.parametrize("mode", ["chunked-cut", "short"])
def test_body_cut_short_keeps_the_part_and_resumes(
    tmp_path: Path, mag_files: dict[str, bytes], capsys, mode: str
) -> None:
    part = tmp_path / "2018" / "meta_Magazine_Subscriptions.json.gz.part"
    with serving(mag_files, {META: mode}) as srv:
        assert get_magazine(srv.url, tmp_path) == 2
    line = only_error_line(capsys.readouterr().err)
    received = part.stat().st_size
    assert 0 < received < len(mag_files[META])
    if mode == "chunked-cut":
        assert line.startswith(f"srt-prep: error: {part}: download of http://127.0.0.1:")
        assert (
            f"interrupted after {received} bytes (the connection closed before the end of the body); " in line
            and "rerun to resume" in line
        )
    else:
        assert line.endswith(f"incomplete ({received} of {len(mag_files[META])} bytes); rerun to resume")
    assert not (tmp_path / "2018" / "meta_Magazine_Subscriptions.json.gz").exists()
    with serving(mag_files) as srv:
        assert get_magazine(srv.url, tmp_path) == 0
        assert (META, f"bytes={received}-") in srv.requests
    assert (tmp_path / "2018" / "meta_Magazine_Subscriptions.json.gz").read_bytes() == mag_files[META]


def test_2014_layouts_verify(tmp_path: Path) -> None:
    files = {
        "/ratings_Beauty.csv": (FIXTURES / "2014" / "ratings_Beauty.csv").read_bytes(),
        "/meta_Beauty.json.gz": gzip.compress((FIXTURES / "2014" / "meta_Beauty.json").read_bytes()),
    }
    with serving(files) as srv:
        args = ["download", "--category", "2014:Beauty", "--output", str(tmp_path), "--base-url", srv.url]
        assert main(args) == 0
    assert (tmp_path / "2014" / "meta_Beauty.json.gz").is_file()


def test_every_release_url_is_https() -> None:
    assert all(release.base_url.startswith("https://") for release in RELEASES.values())


def test_2023_benchmark_files_get_distinct_names_and_convert(tmp_path: Path) -> None:
    """The 0core and 5core rating-only CSVs share a published name; they are saved apart, their header is
    accepted by the format check, and the folder converts as is."""
    meta = gzip.compress((FIXTURES / "2023" / "meta_All_Beauty.jsonl").read_bytes())
    files = {"/raw/meta_categories/meta_All_Beauty.jsonl.gz": meta}
    for core in ("0core", "5core"):
        data = (FIXTURES / "2023" / f"All_Beauty.{core}.csv").read_bytes()
        files[f"/benchmark/{core}/rating_only/All_Beauty.csv.gz"] = gzip.compress(data)
    with serving(files) as srv:
        for source in ("ratings", "5core"):
            args = ["download", "--category", f"2023:All_Beauty:{source}", "--output", str(tmp_path)]
            assert main([*args, "--base-url", srv.url]) == 0
    folder = tmp_path / "2023"
    for core in ("0core", "5core"):
        assert (folder / f"All_Beauty.{core}.csv.gz").read_bytes() == files[
            f"/benchmark/{core}/rating_only/All_Beauty.csv.gz"
        ]
    log = json.loads((folder / "downloads.json").read_text())["files"]
    assert log["All_Beauty.5core.csv.gz"]["url"].endswith("/benchmark/5core/rating_only/All_Beauty.csv.gz")
    args = ["convert", "--category", "2023:All_Beauty:5core", "--input", str(tmp_path)]
    assert (
        main([*args, "--output", str(tmp_path / "out"), "--min-user-inter", "1", "--min-item-inter", "1"])
        == 0
    )
