"""The HTTP trust boundary: no writes from other sites, JSON bodies only and bounded, no 500
from any input, one log line per record, bounded work for anonymous reads, and a 503 naming
the path when the disk refuses a write."""

from __future__ import annotations

import contextlib
import errno
import json
import re
import select
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import psutil
import pytest
from fastapi.testclient import TestClient
from starlette.types import Message, Scope

from backend.ml.fsio import file_lock
from backend.ml.history.document import YearArchive
from tests.app.conftest import API_KEY, ClientFactory, app_settings, error, ok
from tests.app.test_models import ROLLBACK, records
from tests.e2e.servers import Server

EVIL = "https://evil.example"
FORM = {"content-type": "application/x-www-form-urlencoded"}
AUTH = {"Authorization": f"Bearer {API_KEY}"}
OWN = "http://testserver"  # the TestClient's own origin
WRITES = [f"/ml/models/{ROLLBACK}/rollback", "/ml/training/trigger"]
PREDICT = "/ml/models/decision_support/predict"


def state(client: TestClient) -> tuple[bytes, bytes]:
    settings = app_settings(client)
    return ((settings.MODELS_DIR / "registry.json").read_bytes(),
            settings.history_file.read_bytes())


@contextlib.contextmanager
def training_lock_held(client: TestClient) -> Iterator[None]:
    """A run "holds" the training lock, so a trigger the guard lets through answers 409
    instead of training."""
    with file_lock(app_settings(client).LOGS_DIR / "training.lock", timeout=0,
                   purpose="run_id=run-guard-test manual"):
        yield


# ---- no writes from other sites ----------------------------------------------------------


CROSS_SITE = [
    pytest.param({"Origin": EVIL, **FORM}, id="form-post-from-another-site"),
    pytest.param({"Sec-Fetch-Site": "cross-site", **FORM}, id="fetch-site-cross-site-form"),
    pytest.param({"Sec-Fetch-Site": "same-site"}, id="fetch-site-same-site"),
    pytest.param({"Origin": "null", **FORM}, id="opaque-origin"),
    pytest.param({"Origin": f"{OWN}:8080", "content-type": "application/json"},
                 id="same-host-other-port"),
    pytest.param({"Origin": "https://testserver", "content-type": "application/json"},
                 id="same-host-other-scheme"),
]


@pytest.mark.parametrize("key", [None, API_KEY], ids=["no-key", "with-key"])
def test_cross_site_writes_are_refused_and_change_nothing(
        make_client: ClientFactory, key: str | None) -> None:
    client = make_client(ML_API_KEY=key)
    before = state(client)
    auth = AUTH if key else {}
    for path in WRITES:
        for case in CROSS_SITE:
            headers = {**case.values[0], **auth}  # type: ignore[dict-item]
            body = b"" if "json" not in headers.get("content-type", "") else b"{}"
            response = client.post(path, content=body, headers=headers)
            assert response.status_code in (403, 415), (path, case.id, response.text)
            assert "cross-site" in error(response, response.status_code)["message"]
    assert state(client) == before
    status = ok(client.get("/ml/training/status"))
    assert status["trainer_status"]["is_training"] is False and status["progress"] is None


def test_an_allowed_origin_passes_the_guard(make_client: ClientFactory) -> None:
    client = make_client(ALLOWED_ORIGINS="https://ops.example.com, http://10.0.0.5:8080")
    allowed = {"Origin": "https://OPS.example.com:443", "Sec-Fetch-Site": "cross-site"}
    data = ok(client.post(f"/ml/models/{ROLLBACK}/rollback", json={}, headers=allowed))
    assert data["aliases"]["production"] == "v0001"
    with training_lock_held(client):
        error(client.post("/ml/training/trigger", headers={"Origin": "http://10.0.0.5:8080"}),
              409)
    error(client.post(f"/ml/models/{ROLLBACK}/rollback", json={},
                      headers={"Origin": "https://ops.example.com.evil.example"}), 403)


def test_same_origin_json_and_bare_posts_answer_as_before(make_client: ClientFactory,
                                                          small_db: str) -> None:
    client = make_client()
    dashboard = {"Origin": OWN, "Sec-Fetch-Site": "same-origin"}  # what a browser adds
    data = ok(client.post(f"/ml/models/{ROLLBACK}/rollback", json={"reason": "test"},
                          headers=dashboard))
    assert data["aliases"]["production"] == "v0001"
    # curl -X POST: no body, no content type, no Origin
    assert ok(client.post(f"/ml/models/{ROLLBACK}/rollback"))["aliases"]["production"] == \
        "v0002"
    with training_lock_held(client):
        assert "run-guard-test" in error(client.post("/ml/training/trigger"), 409)["run_id"]
        error(client.post("/ml/training/trigger", headers=dashboard), 409)
    body = {"records": records(small_db, "decision_support", 2)}
    assert ok(client.post(PREDICT, json=body, headers=dashboard))["count"] == 2
    ok(client.get("/ml/training/status", headers={"Origin": EVIL}))  # reading stays open


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain;charset=UTF-8",
                                          "multipart/form-data; boundary=x",
                                          "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_json_is_415(shared_client: TestClient,
                                        content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    before = state(shared_client)
    for path in [PREDICT, f"/ml/models/{ROLLBACK}/rollback"]:
        response = shared_client.post(path, content=b'{"records": [{}]}', headers=headers)
        assert "application/json" in error(response, 415)["message"]
    assert state(shared_client) == before


def test_a_json_media_type_with_parameters_or_a_suffix_is_json(shared_client: TestClient,
                                                               small_db: str) -> None:
    body = json.dumps({"records": records(small_db, "decision_support", 1)}).encode()
    for content_type in ["application/json; charset=utf-8", "Application/JSON",
                         "application/vnd.predict+json"]:
        response = shared_client.post(PREDICT, content=body,
                                      headers={"content-type": content_type})
        assert ok(response)["count"] == 1, content_type


# ---- bounded bodies ----------------------------------------------------------------------


def test_a_body_over_max_request_bytes_is_413(make_client: ClientFactory,
                                              small_db: str) -> None:
    client = make_client(MAX_REQUEST_BYTES=4096)
    small = {"records": records(small_db, "decision_support", 2)}
    assert ok(client.post(PREDICT, json=small))["count"] == 2
    big = {"records": records(small_db, "decision_support", 200)}
    response = client.post(PREDICT, json=big)
    message = error(response, 413)["message"]
    assert "4096" in message and "MAX_REQUEST_BYTES" in message
    assert response.headers["connection"] == "close"
    before = state(client)
    error(client.post(f"/ml/models/{ROLLBACK}/rollback",
                      json={"reason": "x" * 400, "pad": "y" * 5000}), 413)
    assert state(client) == before


def test_a_chunked_body_stops_being_read_past_the_limit(make_client: ClientFactory) -> None:
    """Driven through ASGI directly: the test client would read a streamed body whole
    before the app sees it."""
    client = make_client(MAX_REQUEST_BYTES=4096)
    app = client.app
    chunk, served = b"x" * 1024, 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal served
        served += 1
        assert served < 10_000, "the body was read on and on"
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": PREDICT, "raw_path": PREDICT.encode(),
             "root_path": "", "query_string": b"", "server": ("testserver", 80),
             "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                         (b"transfer-encoding", b"chunked")]}
    anyio.run(app, scope, receive, send)
    assert sent[0]["status"] == 413
    assert served == 5  # 4096 bytes allowed: the fifth KiB passed the limit, reading stopped
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert body["status"] == "error" and "MAX_REQUEST_BYTES" in body["error"]["message"]


def test_predict_takes_at_most_max_predict_records(make_client: ClientFactory,
                                                   small_db: str) -> None:
    client = make_client(MAX_PREDICT_RECORDS=3)
    assert ok(client.post(PREDICT, json={"records": records(small_db,
                                                             "decision_support", 3)}))
    found = error(client.post(PREDICT, json={"records": records(small_db, "decision_support",
                                                                 4)}), 422)
    assert found["message"].startswith("body.records") and "MAX_PREDICT_RECORDS" in \
        found["message"] and "at most 3" in found["message"]


def http_response(sock: socket.socket, timeout: float = 10) -> bytes:
    """What the server answered on `sock` until it closed or the answer was whole."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        while chunk := sock.recv(65536):
            data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            if length and len(rest) >= int(length.group(1)):
                break
    return data


def post_chunked(port: int, path: str, total: int) -> tuple[bytes, int]:
    """Stream `total` bytes as a chunked POST, stopping when the server answers; (its
    answer, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     .encode())
        piece = b'{"a": 1}, ' * 6553  # ~64 KiB
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < total and not select.select([sock], [], [], 0)[0]:
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                sent += len(piece)
        return http_response(sock), sent


def post_declaring(port: int, path: str, length: int) -> bytes:
    """A POST declaring `length` bytes and sending none of them: the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
                     .encode())
        return http_response(sock)


def test_a_20_mb_body_is_refused_by_a_real_server_without_being_held(
        small_db: str, tmp_path: Path) -> None:
    server = Server(tmp_path, small_db, workers=1, SCHEDULER_ENABLED="false",
                    MAX_REQUEST_BYTES=str(2**20))
    try:
        server.wait_ready()
        process = psutil.Process(server.proc.pid)
        twenty_mb = 20 * 10**6
        post_chunked(server.port, PREDICT, 3 * 2**20)  # warm up the path once
        rss_before = process.memory_info().rss
        answer = post_declaring(server.port, PREDICT, twenty_mb)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
        assert b"MAX_REQUEST_BYTES" in answer
        answer, sent = post_chunked(server.port, PREDICT, twenty_mb)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
        assert sent < twenty_mb, "the server read the whole body before answering"
        growth = process.memory_info().rss - rss_before
        assert growth < 5 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"
        print(f"RSS growth after refusing two 20 MB bodies: {growth / 2**20:.2f} MiB "
              f"(chunked: {sent / 2**20:.1f} MiB sent before the answer)")
    finally:
        server.stop()


# ---- no 500 from any input ---------------------------------------------------------------


BAD_QUERIES = [
    "/ml/training/history?archived=true&since=9999-12-31T23:59:59-14:00",
    "/ml/training/history?since=0001-01-01T00:00:00%2B14:00",
    "/ml/training/history?since=2026-02-30T00:00:00Z",
    "/ml/training/history?since=2026-01-01T25:00:00Z",
    "/ml/training/history?since=2026-01-01T00:00:00%2B99:00",
    "/ml/alerts?since=9999-12-31T23:59:59-23:59",
    f"/ml/training/history?offset={'9' * 5000}",
    f"/ml/training/history?limit={'9' * 40}",
    "/ml/alerts?limit=1e400",
    f"/ml/models/{ROLLBACK}/timeline?limit=99999999999999999999999",
]


@pytest.mark.parametrize("path", BAD_QUERIES, ids=range(len(BAD_QUERIES)))
def test_bad_query_values_are_422_with_a_message(shared_client: TestClient,
                                                 path: str) -> None:
    found = error(shared_client.get(path), 422)
    assert found["details"] and found["message"].startswith("query.")


def predict_text(small_db: str, value: str) -> str:
    rows = records(small_db, "decision_support", 1)
    return json.dumps({"records": rows}).replace(
        f'"stock_level_pct": {rows[0]["stock_level_pct"]}', f'"stock_level_pct": {value}')


@pytest.mark.parametrize("value", ["1" + "0" * 399, "-" + "9" * 400, "1e400", "-1e400",
                                   "Infinity", "NaN"])
def test_a_feature_value_no_float_can_hold_is_422_naming_it(
        shared_client: TestClient, small_db: str, value: str) -> None:
    found = error(shared_client.post(PREDICT, content=predict_text(small_db, value),
                                     headers={"content-type": "application/json"}), 422)
    assert "body.records[0].stock_level_pct" in found["message"], found


def test_extreme_finite_feature_values_are_predicted(shared_client: TestClient,
                                                     small_db: str) -> None:
    for value in ["1e308", "-1.7e308", "1" + "0" * 300, "5e-324"]:
        response = shared_client.post(PREDICT, content=predict_text(small_db, value),
                                      headers={"content-type": "application/json"})
        assert ok(response)["count"] == 1, value


def test_odd_versions_and_run_ids_are_4xx(shared_client: TestClient, small_db: str) -> None:
    long_version = "v" + "9" * 300
    for response in [
        shared_client.post(PREDICT, json={"records": [{}], "version": long_version}),
        shared_client.post(f"/ml/models/{ROLLBACK}/rollback", json={"version": long_version}),
    ]:
        assert "body.version" in error(response, 422)["message"]
    found = error(shared_client.post(PREDICT, json={
        "records": records(small_db, "decision_support", 1), "version": "v99999999"}), 404)
    assert "v0001" in found["message"]  # lists what exists; nothing was loaded
    for run_id in ["x" * 100, "%0Arun%1B[31m", "..%2F..%2Fetc%2Fpasswd"]:
        error(shared_client.get(f"/ml/training/runs/{run_id}"), 404)
    error(shared_client.get(f"/ml/training/runs/{'x' * 101}"), 422)


def test_deeply_nested_json_is_4xx(shared_client: TestClient) -> None:
    body = '{"records": [{"x": ' + "[" * 100_000 + "]" * 100_000 + "}]}"
    response = shared_client.post(PREDICT, content=body,
                                  headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["status"] == "error"


# ---- one record, one log line ------------------------------------------------------------


def test_a_reason_with_newlines_writes_one_log_line(make_client: ClientFactory) -> None:
    client = make_client()
    log = app_settings(client).LOGS_DIR / "training_scheduler.log"
    before = log.read_text(encoding="utf-8").splitlines()
    reason = "ok\nFAKE LOG LINE 2026-01-01 00:00:00,000 CRITICAL forged\r\x1b[2Kgone\u2028x"
    ok(client.post(f"/ml/models/{ROLLBACK}/rollback", json={"reason": reason}))
    added = log.read_text(encoding="utf-8").splitlines()[len(before):]
    assert len(added) == 1, added
    assert "FAKE LOG LINE" in added[0] and "\\n" in added[0] and "\\x1b" in added[0]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO ", added[0]), added[0]
    assert "\x1b" not in added[0] and "\r" not in added[0]


# ---- bounded work for anonymous reads ----------------------------------------------------


def write_archives(client: TestClient, years: range, runs_per_year: int) -> None:
    history = client.app.state.services.history  # type: ignore[attr-defined]
    for year in years:
        part = YearArchive(trainings=[
            {"run_id": f"run-{year}-{i:04d}", "timestamp": f"{year}-06-01T02:00:00+00:00",
             "status": "success", "trigger": "daily", "models_trained": 1}
            for i in range(runs_per_year)])
        history.archive_path(year).write_text(part.model_dump_json())


def test_archived_history_is_parsed_once_per_file(make_client: ClientFactory) -> None:
    client = make_client()
    write_archives(client, range(2021, 2024), 50)
    cache = client.app.state.services.history.archives.parsed  # type: ignore[attr-defined]
    first = ok(client.get("/ml/training/history?archived=true&limit=500"))
    assert first["page"]["count"] == 2 + 150
    assert (cache.stats.hits, cache.stats.misses) == (0, 3)
    second = ok(client.get("/ml/training/history?archived=true&limit=500"))
    assert second["history"]["trainings"] == first["history"]["trainings"]
    assert (cache.stats.hits, cache.stats.misses) == (3, 3)  # each file read once
    # a changed year file is read again; the others are not
    write_archives(client, range(2022, 2023), 60)
    assert ok(client.get("/ml/training/history?archived=true&limit=500"))["page"][
        "count"] == 2 + 160
    assert (cache.stats.hits, cache.stats.misses) == (5, 4)


def test_run_ids_are_found_through_an_index_not_a_scan(make_client: ClientFactory) -> None:
    client = make_client()
    write_archives(client, range(2021, 2024), 50)
    cache = client.app.state.services.history.archives.parsed  # type: ignore[attr-defined]
    assert ok(client.get("/ml/training/runs/run-2021-0007"))["run_id"] == "run-2021-0007"
    assert cache.stats.misses == 3  # the index of each year, built once
    reads = cache.stats.hits + cache.stats.misses
    for _ in range(5):
        error(client.get("/ml/training/runs/run-unknown"), 404)
    assert cache.stats.hits + cache.stats.misses == reads  # no archive parsed or scanned
    ok(client.get("/ml/training/runs/run-2023-0049"))
    assert cache.stats.misses == 3


# ---- a disk that refuses writes ----------------------------------------------------------


def mount_tmpfs(path: Path, size: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, check=False)
    return done.returncode == 0


def fill(path: Path) -> None:
    """Take every free byte of the file system holding `path`."""
    with (path / "filler").open("wb", buffering=0) as out, contextlib.suppress(OSError):
        while out.write(b"\0" * 65536):
            pass


@pytest.fixture
def small_disk(tmp_path: Path, trained_root: Path) -> Iterator[Path]:
    """A 'models' folder on its own small tmpfs holding a copy of the trained models (the
    process is root: permissions would not stop it, a full disk does)."""
    models = tmp_path / "disk" / "models"
    pages = sum(-(-p.stat().st_size // 4096) for p in (trained_root / "models").rglob("*")
                if p.is_file())
    if not mount_tmpfs(models.parent, (pages + 256) * 4096):
        pytest.skip("cannot mount a tmpfs here")
    try:
        shutil.copytree(trained_root / "models", models)
        yield models
    finally:
        subprocess.run(["umount", "-l", str(models.parent)], check=False)


@pytest.mark.parametrize("how", ["full", "read-only"])
def test_a_disk_refusing_writes_is_503_naming_the_path(
        make_client: ClientFactory, small_disk: Path, how: str) -> None:
    client = make_client(MODELS_DIR=small_disk)
    if how == "full":
        fill(small_disk.parent)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk.parent)], check=True)
    registry = (small_disk / "registry.json").read_bytes()
    response = client.post(f"/ml/models/{ROLLBACK}/rollback", json={"reason": "disk test"})
    found = error(response, 503)
    code = "ENOSPC" if how == "full" else "EROFS"
    assert code in found["message"] and str(small_disk) in found["message"], found
    assert "\n" not in found["message"] and "Traceback" not in response.text
    assert (small_disk / "registry.json").read_bytes() == registry
    if how == "full":  # room again: the same request works
        (small_disk.parent / "filler").unlink()
    else:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk.parent)], check=True)
    ok(client.post(f"/ml/models/{ROLLBACK}/rollback", json={"reason": "disk test"}))


def test_an_os_error_behind_a_write_is_503_without_a_mount(
        make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no file system can be mounted: the write itself raises the disk's error."""
    client = make_client()
    path = app_settings(client).MODELS_DIR / "registry.json"

    def no_space(target: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr("backend.ml.statefile.atomic_write_bytes", no_space)
    found = error(client.post(f"/ml/models/{ROLLBACK}/rollback"), 503)
    assert "ENOSPC" in found["message"] and str(path.parent) in found["message"]


def test_the_openapi_document_lists_the_guards_answers(shared_client: TestClient) -> None:
    paths = shared_client.get("/openapi.json").json()["paths"]
    for path, method in [("/ml/training/trigger", "post"),
                         ("/ml/models/{name}/rollback", "post"),
                         ("/ml/models/{name}/predict", "post")]:
        assert {"403", "413", "415", "503"} <= set(paths[path][method]["responses"]), path
    assert "403" not in paths["/ml/models"]["get"]["responses"]

