"""Bounds of every ``srt-prep`` input: gzip bombs, endless lines, runs of empty lines, other compressions and
encodings, files that are no regular file, downloads that trickle, and the engine's spill of killed runs.

Each bad input is one ``srt-prep: error:`` line naming the file (and the line), exit 2, in bounded time and
memory. Bombs are built in ``tmp_path`` from gzip members of a few kB that unpack to 64 MiB each, so a file
of about 1 MB unpacks to GiBs without writing them anywhere."""

from __future__ import annotations

import bz2
import fcntl
import functools
import gzip
import lzma
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import SLICES

from dataset_prep import readers
from dataset_prep.cli import main
from dataset_prep.errors import PrepError
from dataset_prep.streams import MAX_EMPTY_LINES, MAX_LINE, MAX_RATIO, LineBlocks, text_lines

REPO = Path(__file__).parents[1]
MAGAZINE = SLICES / "amazon2018-magazine-subscriptions"
SCIENTIFIC = SLICES / "scientific-unisrec"
CSV = "Magazine_Subscriptions.csv"
META = "meta_Magazine_Subscriptions.json.gz"
CSV_TEXT = gzip.decompress((MAGAZINE / f"{CSV}.gz").read_bytes())
RATIO = f"unpacks to more than {MAX_RATIO} times its size (a gzip bomb?)"
LONG = f"a line longer than {MAX_LINE >> 20} MiB, the most srt-prep reads as one record: not a data file"
EMPTY = f"more than {MAX_EMPTY_LINES:,} empty lines in a row: not a data file"
MEMBER = 64 << 20  # bytes one bomb member unpacks to
# The most a bomb may cost: the interpreter with pyarrow and DuckDB loaded is about 200 MB; the reader adds
# its blocks (64 MiB), one line (16 MiB) and their joins.
MAX_RSS_MB = 700
MAX_SECONDS = 60  # each bomb below is refused within a few seconds; this only catches a hang


@functools.cache
def bomb_member(pattern: bytes) -> bytes:
    """One gzip member of ``pattern`` repeated to 64 MiB (about 64 kB packed)."""
    packer = zlib.compressobj(6, wbits=31)
    return packer.compress(pattern * (MEMBER // len(pattern))) + packer.flush()


def write_bomb(path: Path, pattern: bytes, gib: int = 3, head: bytes = b"") -> Path:
    """A gzip file that unpacks to ``head`` and then ``gib`` GiB of ``pattern``."""
    member = bomb_member(pattern)
    with open(path, "wb") as out:
        if head:
            out.write(gzip.compress(head))
        for _ in range(gib * (1 << 30) // MEMBER):
            out.write(member)
    return path


def magazine_with(folder: Path, csv: bytes | Path | None = None, meta: bytes | Path | None = None) -> Path:
    """``folder`` holding the real Magazine slice, but ``csv`` / ``meta`` (bytes, or a path to link to) in
    place of the ratings CSV / the metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, given, real in ((f"{CSV}.gz", csv, MAGAZINE / f"{CSV}.gz"), (META, meta, MAGAZINE / META)):
        target = folder / name
        if isinstance(given, bytes):
            target.write_bytes(given)
        else:
            target.symlink_to(given or real)
    return folder


def convert_args(source: Path, out: Path, *extra: str) -> list[str]:
    return [
        "convert", "--category", "2018:Magazine_Subscriptions", "--input", str(source), "--output", str(out),
        "--name", "mag", "--min-user-inter", "1", "--min-item-inter", "1", *extra,
    ]  # fmt: skip


def run_measured(args: list[str], timeout: float = MAX_SECONDS) -> tuple[int, str, float, float]:
    """``srt-prep ARGS`` in a fresh process: exit status, stderr, seconds and that process's peak RSS (MB)."""
    # VmHWM is this process image's own peak; ru_maxrss would carry over the forking test process's peak
    code = (
        "import re, sys\nfrom pathlib import Path\nfrom dataset_prep.cli import main\n"
        "status = main(sys.argv[1:])\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', Path('/proc/self/status').read_text()).group(1)\n"
        "print('peak-rss-kb', hwm, file=sys.stderr)\nsys.exit(status)"
    )
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    seconds = time.monotonic() - start
    lines = done.stderr.splitlines()
    rss = [int(line.split()[1]) / 1024 for line in lines if line.startswith("peak-rss-kb ")]
    err = "\n".join(line for line in lines if not line.startswith("peak-rss-kb "))
    return done.returncode, err, seconds, rss[0] if rss else float("nan")


def one_error(err: str) -> str:
    """The one error line of ``err`` (without its prefix); fails on a traceback or several lines."""
    lines = [line for line in err.splitlines() if line.startswith("srt-prep: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0].removeprefix("srt-prep: error: ")


def error_of(capsys, args: list[str]) -> str:
    """``srt-prep ARGS`` in this process: it must exit 2 with one error line; that line."""
    assert main(args) == 2
    return one_error(capsys.readouterr().err)


# --- 1. bombs: one bounded reader for every file ------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "pattern", "message"),
    [
        ("meta", b"\0", f": {RATIO}"),
        ("csv", b"\0", f": {RATIO}"),
        ("meta", b"\n", f":1: {EMPTY}"),
        ("csv", b"\r\n", f":1: {EMPTY}"),
        ("meta", b"{}\n", f": {RATIO}"),
        ("meta", None, f":2: {LONG}"),
    ],
    ids=[
        "meta-zeros",
        "csv-zeros",
        "meta-newlines",
        "csv-crlf-lines",
        "meta-empty-records",
        "meta-long-line",
    ],
)
def test_convert_refuses_a_gzip_bomb_in_bounded_time_and_memory(
    tmp_path: Path, which: str, pattern: bytes | None, message: str
) -> None:
    if pattern is None:  # no bomb: a record of random hex digits, packed 1:2, just over the line limit
        bomb = tmp_path / "long.gz"
        bomb.write_bytes(gzip.compress(b'{"asin": "B1"}\n' + os.urandom(MAX_LINE // 2 + 1).hex().encode(), 1))
    else:
        bomb = write_bomb(tmp_path / "bomb.gz", pattern)
    source = magazine_with(tmp_path / "src", **{which: bomb})
    status, err, seconds, rss = run_measured(convert_args(source, tmp_path / "out"))
    line = one_error(err)
    name = META if which == "meta" else f"{CSV}.gz"
    assert status == 2 and line.startswith(f"{source / name}{message}"), line
    assert seconds < MAX_SECONDS and rss < MAX_RSS_MB, (seconds, rss)
    assert not (tmp_path / "out" / "mag").exists()


def test_download_refuses_a_gzip_bomb(tmp_path: Path) -> None:
    files = {
        f"/categoryFilesSmall/{CSV}": CSV_TEXT,
        f"/metaFiles2/{META}": write_bomb(tmp_path / "b.gz", b"\0").read_bytes(),
    }
    with serving(files) as url:
        args = ["download", "--category", "2018:Magazine_Subscriptions", "--output", str(tmp_path / "raw")]
        status, err, seconds, rss = run_measured([*args, "--base-url", url, "--timeout", "10"])
    line = one_error(err)
    assert status == 2 and line == (
        f"{tmp_path}/raw/2018/{META}: downloaded file failed verification ({RATIO}; real Amazon files unpack "
        "to less than 10 times theirs); deleted, rerun"
    )
    assert seconds < MAX_SECONDS and rss < MAX_RSS_MB, (seconds, rss)


def test_a_record_as_long_as_the_line_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "long.txt"
    path.write_bytes(b"a\n" + b"x" * MAX_LINE + b"\nb\n")
    assert [len(line) for _, line in text_lines(path)] == [1, MAX_LINE, 1]
    path.write_bytes(b"a\n" + b"x" * (MAX_LINE + 1) + b"\nb\n")
    with pytest.raises(PrepError, match=f"{path}:2: a line longer than"):
        list(text_lines(path))


def test_empty_lines_are_bounded_in_plain_files_too(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"a,b,1,2\n" + b"\r\n" * MAX_EMPTY_LINES + b"c,d,3,4\n")  # exactly the limit: read
    assert [n for n, line in text_lines(path) if line] == [1, MAX_EMPTY_LINES + 2]
    path.write_bytes(b"a,b,1,2\n" + b"\n\r" * (MAX_EMPTY_LINES + 1) + b"\nc,d,3,4\n")  # LF and CRLF mixed
    with pytest.raises(PrepError) as caught:
        list(LineBlocks(path, block_size=4096))
    assert str(caught.value) == f"{path}:2: {EMPTY}"


def test_exclusions_and_unisrec_files_go_through_the_bounded_reader(tmp_path: Path, capsys) -> None:
    bomb = write_bomb(tmp_path / "users.inter.gz", b"\0", gib=1)
    line = error_of(capsys, convert_args(MAGAZINE, tmp_path / "out", "--exclude-users-of", str(bomb)))
    assert line.startswith(f"{bomb}: {RATIO}")
    uni = unisrec_copy(tmp_path / "uni")
    text = uni / "Scientific.text"
    text.write_bytes(text.read_bytes() + b"x\t" + b"y" * (MAX_LINE + 1) + b"\n")
    line = error_of(capsys, unisrec_args(uni))
    assert line == f"{text}:{len(text.read_text().splitlines())}: {LONG}"


# --- 2. trickling downloads: one deadline on throughput ---------------------------------------------------


class TrickleServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the client hanging up on a trickle is expected


def handler(files: dict[str, bytes], mode: str) -> type[BaseHTTPRequestHandler]:
    """Serves ``files``; ``mode`` for the metadata file: ``trickle`` (the body one byte a second),
    ``trickle-headers`` (the status line and headers one byte a second), ``redirect-loop`` (every path
    redirects to itself)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            body = files.get(self.path)
            special = mode if "meta" in self.path or mode == "redirect-loop" else ""
            if special == "redirect-loop":
                self.send_response(302)
                self.send_header("Location", self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if body is None:
                self.send_error(404)
                return
            if special == "trickle-headers":
                drip(self.wfile, b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if special == "trickle":
                self.wfile.write(body[:5000])
                drip(self.wfile, body[5000:])
            else:
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def drip(out, data: bytes) -> None:
    """Send ``data`` a byte a second (stops when the client hangs up)."""
    try:
        for byte in data:
            out.write(bytes([byte]))
            out.flush()
            time.sleep(1)
    except OSError:
        pass


@contextmanager
def serving(files: dict[str, bytes], mode: str = "") -> Iterator[str]:
    server = TrickleServer(("127.0.0.1", 0), handler(files, mode))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def published() -> dict[str, bytes]:
    return {f"/categoryFilesSmall/{CSV}": CSV_TEXT, f"/metaFiles2/{META}": (MAGAZINE / META).read_bytes()}


def download(url: str, out: Path, timeout: str = "2") -> list[str]:
    args = ["download", "--category", "2018:Magazine_Subscriptions", "--output", str(out)]
    return [*args, "--base-url", url, "--timeout", timeout]


@pytest.mark.parametrize("mode", ["trickle", "trickle-headers"])
def test_a_trickle_is_a_stall(tmp_path: Path, capsys, published: dict[str, bytes], mode: str) -> None:
    with serving(published, mode) as url:
        start = time.monotonic()
        line = error_of(capsys, download(url, tmp_path))
        seconds = time.monotonic() - start
    meta_url = f"{url}metaFiles2/{META}"
    part = tmp_path / "2018" / f"{META}.part"
    assert seconds < 15, seconds  # --timeout 2: a window or two, never the hours a trickle would take
    if mode == "trickle":
        kept = part.stat().st_size
        assert 5000 <= kept < 5100  # the bytes received are kept to resume
        assert line == (
            f"{part}: download of {meta_url} stalled: less than 1 KiB/s over the last 2 s (--timeout 2); "
            f"kept {kept} bytes, rerun to resume"
        )
    else:
        assert line == (
            f"download of {meta_url} stalled: no complete answer within 2 s (--timeout 2); rerun to resume"
        )
    assert (tmp_path / "2018" / CSV).is_file()  # the file before it is kept


def test_a_redirect_loop_is_one_line(tmp_path: Path, capsys, published: dict[str, bytes]) -> None:
    with serving(published, "redirect-loop") as url:
        line = error_of(capsys, download(url, tmp_path))
    assert line == (
        f"download failed: too many redirects (a redirect loop?) for {url}categoryFilesSmall/{CSV}; "
        "the last answer was HTTP 302 Found"
    )


# --- 4. the engine's spill of killed runs -----------------------------------------------------------------


def spill_folder(parent: Path, name: str, locked: bool | None) -> tuple[Path, int | None]:
    """A spill folder as an engine leaves it; its lock file held by this process (``locked``), released
    (a dead run), or absent (None: not a folder the engine made)."""
    folder = parent / name
    folder.mkdir()
    (folder / "duckdb_temp_storage-0.tmp").write_bytes(b"x" * 1000)
    if locked is None:
        return folder, None
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    if locked:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return folder, fd
    os.close(fd)
    return folder, None


def test_spill_of_dead_runs_is_removed_and_live_or_foreign_spill_kept(tmp_path: Path, capsys) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    dead, _ = spill_folder(spill, ".srt-prep-engine-dead1234", locked=False)
    live, fd = spill_folder(spill, ".srt-prep-engine-live5678", locked=True)
    foreign, _ = spill_folder(spill, ".srt-prep-engine-nolock", locked=None)
    other, _ = spill_folder(spill, "srt-prep-engine-mine", locked=False)
    try:
        assert main(convert_args(MAGAZINE, tmp_path / "out", "--temp-dir", str(spill))) == 0
    finally:
        os.close(fd)
    capsys.readouterr()
    assert not dead.exists()
    assert live.is_dir() and foreign.is_dir() and other.is_dir()


def test_spill_of_a_killed_convert_is_removed_by_the_next_run(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    args = [sys.executable, "-m", "dataset_prep", *convert_args(MAGAZINE, tmp_path / "out")]
    args += ["--temp-dir", str(spill)]
    run = subprocess.Popen(args, cwd=REPO, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:  # killed as soon as its engine holds its spill folder
        deadline = time.monotonic() + MAX_SECONDS
        while not list(spill.glob("*/lock")) and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        run.send_signal(signal.SIGKILL)
    finally:
        run.wait()
    left = list(spill.glob(".srt-prep-engine-*"))
    assert len(left) == 1  # what a killed run leaves
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=MAX_SECONDS)
    assert done.returncode == 0, done.stderr
    assert list(spill.iterdir()) == []


# --- 6. the probe of 2026-12-07: odd files, compressions, encodings -----------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (gzip.compress(gzip.compress(CSV_TEXT)), "is gzip data inside gzip (compressed twice?)"),
        (bz2.compress(CSV_TEXT), "is bzip2 data"),
        (lzma.compress(CSV_TEXT), "is xz data"),
        (b"\x28\xb5\x2f\xfd\x04\x58" + CSV_TEXT[:100], "is zstd data"),
        (b"PK\x03\x04\x14\x00" + CSV_TEXT[:100], "is zip data"),
        (gzip.compress(CSV_TEXT.decode().encode("utf-16")), "is UTF-16 text inside gzip"),
    ],
    ids=["gzip-of-gzip", "bz2", "xz", "zstd", "zip", "utf-16"],
)
def test_other_compressions_and_encodings_are_named(
    tmp_path: Path, capsys, data: bytes, message: str
) -> None:
    source = magazine_with(tmp_path / "src", csv=data)
    line = error_of(capsys, convert_args(source, tmp_path / "out"))
    advice = "srt-prep reads UTF-8 text, plain or gzipped: unpack or re-encode it first"
    assert line == f"{source / CSV}.gz: {message}; {advice}"


@pytest.mark.parametrize("kind", ["fifo", "loop", "device"])
def test_a_path_that_is_no_regular_file(tmp_path: Path, capsys, kind: str) -> None:
    source = magazine_with(tmp_path / "src")
    path = source / f"{CSV}.gz"
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
        expected = "not a regular file but a FIFO (named pipe); srt-prep reads files"
    elif kind == "loop":
        path.symlink_to(path.name)
        expected = "cannot read (Too many levels of symbolic links)"
    else:
        path.symlink_to("/dev/zero")  # never ends
        expected = "not a regular file but a character device; srt-prep reads files"
    assert error_of(capsys, convert_args(source, tmp_path / "out")) == f"{path}: {expected}"


def test_a_spec_or_unisrec_file_that_is_a_fifo_does_not_hang(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "spec"
    os.mkfifo(spec)
    args = ["convert", "--spec", str(spec), "--input", str(tmp_path), "--output", str(tmp_path / "out")]
    line = error_of(capsys, args)
    assert line == f"{spec}: not a regular file but a FIFO (named pipe); srt-prep reads files"
    uni = unisrec_copy(tmp_path / "uni")
    (uni / "Scientific.text").unlink()
    os.mkfifo(uni / "Scientific.text")
    assert error_of(capsys, unisrec_args(uni)) == (
        f"{uni / 'Scientific.text'}: not a regular file but a FIFO (named pipe); srt-prep reads files"
    )


def converted(capsys, source: Path, out: Path) -> tuple[bytes, bytes]:
    assert main(convert_args(source, out)) == 0
    capsys.readouterr()
    return (out / "mag" / "mag.inter").read_bytes(), (out / "mag" / "mag.item").read_bytes()


@pytest.mark.parametrize("change", ["bom", "crlf", "bom-crlf"])
def test_bom_and_crlf_give_the_same_dataset(tmp_path: Path, capsys, change: str) -> None:
    text = CSV_TEXT.replace(b"\n", b"\r\n") if "crlf" in change else CSV_TEXT
    text = b"\xef\xbb\xbf" + text if "bom" in change else text
    source = magazine_with(tmp_path / "src", csv=gzip.compress(text))
    assert converted(capsys, source, tmp_path / "a") == converted(capsys, MAGAZINE, tmp_path / "b")
    report = (tmp_path / "a" / "mag" / "report.json").read_text()
    assert '"malformed": 0' in report and "\\ufeff" not in report


def test_metadata_of_garbage_lines_stops_early(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A metadata file whose first records are all malformed is the wrong file: the reader stops after
    WRONG_FILE_LINES of them instead of parsing millions (100M one-letter lines took over 10 minutes)."""
    parsed = []
    parse = readers._parse_object
    monkeypatch.setattr(readers, "_parse_object", lambda *args: parsed.append(1) or parse(*args))
    source = magazine_with(tmp_path / "src", meta=gzip.compress(b"x\n" * 1_000_000, 1))
    line = error_of(capsys, convert_args(source, tmp_path / "out"))
    assert line.startswith(
        f"{source / META}: no readable metadata record; wrong file or format? First problem:"
    )
    assert len(parsed) == readers.WRONG_FILE_LINES


def unisrec_copy(folder: Path) -> Path:
    folder.mkdir()
    for path in SCIENTIFIC.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def unisrec_args(folder: Path) -> list[str]:
    return ["import-unisrec", "--input", str(folder), "--name", "sci", "--output", str(folder / "out")]


def test_unisrec_text_with_unicode_line_separators_bom_and_crlf(tmp_path: Path, capsys) -> None:
    """U+2028 inside an item's text is no line break (the files are split at \\n only); a BOM and CRLF line
    ends change nothing."""
    plain = unisrec_copy(tmp_path / "plain")
    assert main(unisrec_args(plain)) == 0
    odd = unisrec_copy(tmp_path / "odd")
    for path in odd.iterdir():
        data = path.read_bytes()
        if path.name == "Scientific.text":
            lines = data.split(b"\n")
            lines[5] = lines[5].replace(b" ", " \u2028\x85".encode(), 1)
            data = b"\n".join(lines)
        path.write_bytes(b"\xef\xbb\xbf" + data.replace(b"\n", b"\r\n"))
    assert main(unisrec_args(odd)) == 0
    capsys.readouterr()
    for name in ("sci.inter", "sci.item"):
        assert (odd / "out" / "sci" / name).read_bytes() == (plain / "out" / "sci" / name).read_bytes()
