"""Uploading an image over the API: streamed into the image store, capped, checksummed, checked as
an import is, and recorded whole or not at all.

Pins: a qcow2 uploads (201, the image) and lists with its sha256; a project's private image is
stored under its key; raw bytes in whole sectors are a raw disk (the store's rule), anything else
that is not a usable disk is 400 naming the body; over the limit is 413 (announced: before a byte
is read; streamed: as soon as it passes); a cut-off body (fewer bytes than announced, a stream
that breaks, a client that goes away) is refused; a sha256 that differs is 400 naming sha256; a
taken name is 409 before the body is read, the image untouched. Every refusal leaves no file in the
image store and no record. A server killed mid-upload leaves a staging file that the next sweep
takes back with the file it published, unless the image was recorded; a live upload is never swept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from flexvm.config import Settings
from flexvm.errors import AlreadyExists, DatabaseUnavailable, TooLarge
from flexvm.images.store import ImageStore
from flexvm.platform import Platform
from flexvm.store.repositories import ImageRepo
from tests.conftest import TOKEN
from tests.helpers import wait_for
from tests.unit import test_cli
from tests.unit.api_helpers import error_of
from tests.unit.test_cli import Cli, assert_clean_error
from tests.unit.test_image_store import make_qcow2, make_raw, run_qemu_img, scribble

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) not installed")

# test_cli's fixtures: the CLI's environment pointed at the in-process server, and a client of it.
cli_env = test_cli.cli_env
http = test_cli.http
flexvm = test_cli.flexvm

MIB = 1024 * 1024
LIMIT = 8 * MIB
OCTETS = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def fake_settings(fake_settings: Settings) -> Settings:
    """The suite's settings with a small upload limit, so going past it costs little."""
    return dataclasses.replace(fake_settings, upload_max_bytes=LIMIT)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    directory = tmp_path / "src"
    directory.mkdir()
    return directory


def upload(api: TestClient, content: Any, **params: Any) -> Any:
    """POST an upload: for everyone unless a project is named."""
    if "project" not in params:
        params.setdefault("public", "true")
    return api.post("/v1/images/upload", params=params, content=content, headers=OCTETS)


def store_files(platform: Platform) -> list[str]:
    """Everything in the image store's root, hidden staging files included."""
    return sorted(path.name for path in platform.images.store.root.iterdir())


def assert_nothing_left(platform: Platform, before: list[str] | None = None, images: list[str] | None = None) -> None:
    assert store_files(platform) == (before or [])
    assert [image.name for image in platform.images.list()] == (images or [])


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def chunks_of(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# --- what is let in ----------------------------------------------------------------------------


def test_a_qcow2_uploads_and_lists_with_its_sha256(api: TestClient, platform: Platform, src: Path) -> None:
    disk = make_qcow2(src / "d.qcow2")
    answer = upload(api, chunks_of(disk.read_bytes()), name="web", description="from my laptop")
    assert answer.status_code == 201, answer.text
    image = answer.json()
    assert (image["name"], image["format"], image["sha256"]) == ("web", "qcow2", sha256_of(disk))
    assert (image["virtual_size"], image["description"], image["cloud_init"]) == (64 * MIB, "from my laptop", False)
    assert api.get("/v1/images").json() == [image]
    assert store_files(platform) == ["web.qcow2"]
    platform.images.store.verify(platform.images.get("web"))  # the stored bytes are the ones hashed


def test_a_private_image_is_stored_under_its_projects_key(api: TestClient, platform: Platform, src: Path) -> None:
    for project in ("team-a", "team-b"):
        platform.projects.create(project)
    disk = make_qcow2(src / "d.qcow2")
    answer = upload(api, disk.read_bytes(), name="web", project="team-a", cloud_init="true")
    assert answer.status_code == 201, answer.text
    assert (answer.json()["name"], answer.json()["project"], answer.json()["cloud_init"]) == ("web", "team-a", True)
    assert store_files(platform) == ["team-a.web.qcow2"]
    assert platform.images.get("team-a.web").sha256 == sha256_of(disk)
    # The same name in another project, and everyone's, are other images.
    assert upload(api, disk.read_bytes(), name="web", project="team-b").status_code == 201
    assert upload(api, disk.read_bytes(), name="web").status_code == 201
    assert [image.name for image in platform.images.list()] == ["team-a.web", "team-b.web", "web"]


def test_random_bytes_in_whole_sectors_are_a_raw_disk(api: TestClient, platform: Platform) -> None:
    # The store's rule for imports too: raw is a supported format, and any content whose start
    # no format claims is raw; only its length can be wrong (see the next test).
    data = os.urandom(MIB)
    answer = upload(api, data, name="noise")
    assert answer.status_code == 201, answer.text
    assert (answer.json()["format"], answer.json()["sha256"]) == ("raw", hashlib.sha256(data).hexdigest())
    assert store_files(platform) == ["noise.raw"]


def test_a_body_without_a_length_is_taken_as_it_streams(api: TestClient, platform: Platform, src: Path) -> None:
    disk = make_qcow2(src / "d.qcow2")
    # A generator has no length: httpx sends it chunked, and the limit is counted as it comes.
    answer = upload(api, chunks_of(disk.read_bytes(), 4096), name="web")
    assert answer.status_code == 201, answer.text
    assert "content-length" not in answer.request.headers
    assert answer.json()["sha256"] == sha256_of(disk)


# --- what is refused, leaving nothing ----------------------------------------------------------


def _text(src: Path) -> bytes:
    return b"this is not a disk image\n"


def _qcow2_header_only(src: Path) -> bytes:
    return make_qcow2(src / "d.qcow2").read_bytes()[:48]


def _qcow2_cut_in_half(src: Path) -> bytes:
    data = make_qcow2(src / "d.qcow2", data_mib=4).read_bytes()
    return data[: len(data) // 2]


def _qcow2_with_a_backing_file(src: Path) -> bytes:
    base = make_qcow2(src / "base.qcow2")
    overlay = src / "overlay.qcow2"
    run_qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay))
    return overlay.read_bytes()


def _qcow2_with_a_bad_version(src: Path) -> bytes:
    disk = make_qcow2(src / "d.qcow2")
    scribble(disk, 4, (99).to_bytes(4, "big"))
    return disk.read_bytes()


def _vmdk(src: Path) -> bytes:
    disk = src / "d.vmdk"
    run_qemu_img("create", "-q", "-f", "vmdk", str(disk), "16M")
    return disk.read_bytes()


def _raw_of_odd_length(src: Path) -> bytes:
    return make_raw(src / "d.raw", size_mib=1).read_bytes() + b"x"


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (_text, "not a whole number of 512-byte sectors"),
        (_qcow2_header_only, "header too short"),
        (_qcow2_cut_in_half, "corrupt"),
        (_qcow2_with_a_backing_file, "backing file"),
        (_qcow2_with_a_bad_version, "the uploaded disk"),
        (_vmdk, "only qcow2 and raw are supported"),
        (_raw_of_odd_length, "not a whole number of 512-byte sectors"),
        (lambda _src: b"", "empty"),
    ],
    ids=["text", "qcow2-header-only", "qcow2-cut-in-half", "backing-file", "bad-version", "vmdk", "odd-raw", "empty"],
)
def test_what_is_not_a_usable_disk_is_400_and_leaves_nothing(
    api: TestClient, platform: Platform, src: Path, make: Any, words: str
) -> None:
    error = error_of(upload(api, make(src), name="bad"), 400, "InvalidInput", field="body")
    assert words in error["message"], error
    assert str(platform.images.store.root) not in error["message"]  # it names what was sent, not the staging file
    assert_nothing_left(platform)


def test_an_announced_body_over_the_limit_is_413_before_a_byte_is_read(api: TestClient, platform: Platform) -> None:
    sent = []

    def body() -> Iterator[bytes]:
        sent.append(1)
        yield b"x" * 512

    headers = {**OCTETS, "Content-Length": str(LIMIT + 512)}
    error = error_of(
        api.post("/v1/images/upload", params={"name": "big"}, content=body(), headers=headers),
        413,
        "RequestBodyTooLarge",
    )
    assert (error["details"]["field"], error["details"]["limit"]) == ("body", LIMIT)
    assert sent == []
    assert_nothing_left(platform)


def test_a_stream_that_passes_the_limit_is_413_and_leaves_nothing(server_url: str, platform: Platform) -> None:
    # Over a real connection: TestClient reads a request's whole body before the app sees any.
    def endless() -> Iterator[bytes]:
        for _ in range(4 * LIMIT // MIB):  # a bound, should the server not stop it
            yield b"\x01" * MIB

    headers = {**OCTETS, "Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server_url, headers=headers) as client:
        answer = client.post("/v1/images/upload", params={"name": "big"}, content=endless())
    error_of(answer, 413, "RequestBodyTooLarge")
    assert_nothing_left(platform)


def test_the_service_stops_reading_the_moment_the_limit_is_passed(platform: Platform) -> None:
    read = []

    def endless() -> Iterator[bytes]:
        while True:
            read.append(MIB)
            yield b"\x01" * MIB

    with pytest.raises(TooLarge) as caught:
        platform.images.upload("big", endless(), project=None, limit=LIMIT)
    assert (caught.value.field, caught.value.details["limit"]) == ("body", LIMIT)
    assert sum(read) == LIMIT + MIB  # the block that went past it, and no more
    assert_nothing_left(platform)


def test_fewer_bytes_than_announced_is_refused_and_leaves_nothing(
    api: TestClient, platform: Platform, src: Path
) -> None:
    data = make_qcow2(src / "d.qcow2").read_bytes()
    headers = {**OCTETS, "Content-Length": str(len(data) + 4096)}
    answer = api.post("/v1/images/upload", params={"name": "short"}, content=data, headers=headers)
    error = error_of(answer, 400, "InvalidInput", field="body")
    assert f"cut off: {len(data)} of {len(data) + 4096} bytes" in error["message"]
    assert_nothing_left(platform)


def test_a_stream_that_breaks_part_way_leaves_nothing(server_url: str, platform: Platform, src: Path) -> None:
    data = make_qcow2(src / "d.qcow2", data_mib=4).read_bytes()

    def breaking() -> Iterator[bytes]:
        yield data[: len(data) // 2]
        wait_for(lambda: any(name.endswith(".upload") for name in store_files(platform)), 10, "the upload to start")
        raise ConnectionResetError("the network went away")

    headers = {**OCTETS, "Authorization": f"Bearer {TOKEN}", "Content-Length": str(len(data))}
    with httpx.Client(base_url=server_url, headers=headers) as client, pytest.raises(ConnectionResetError):
        client.post("/v1/images/upload", params={"name": "broken"}, content=breaking())
    wait_for(lambda: store_files(platform) == [], 10, "the staged upload to be removed", interval=0.02)
    assert_nothing_left(platform)


def test_a_client_that_goes_away_leaves_nothing(server_url: str, platform: Platform, src: Path) -> None:
    data = make_qcow2(src / "d.qcow2", data_mib=4).read_bytes()
    address = urlsplit(server_url)
    with socket.create_connection((address.hostname, address.port)) as sock:
        head = (
            f"POST /v1/images/upload?name=gone HTTP/1.1\r\nHost: {address.netloc}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        sock.sendall(head.encode() + data[: len(data) // 2])
        wait_for(lambda: any(name.endswith(".upload") for name in store_files(platform)), 10, "the upload to start")
    # The connection is closed half way: the server stops, and takes back what it staged.
    wait_for(lambda: store_files(platform) == [], 10, "the staged upload to be removed", interval=0.02)
    assert_nothing_left(platform)


def test_a_sha256_that_differs_is_400_naming_it_and_leaves_nothing(
    api: TestClient, platform: Platform, src: Path
) -> None:
    disk = make_qcow2(src / "d.qcow2")
    wrong = "0" * 64
    error = error_of(upload(api, disk.read_bytes(), name="web", sha256=wrong), 400, "InvalidInput", field="sha256")
    assert error["details"]["expected_sha256"] == wrong
    assert error["details"]["actual_sha256"] == sha256_of(disk)
    assert_nothing_left(platform)


def test_a_matching_sha256_in_capitals_is_accepted(api: TestClient, src: Path) -> None:
    disk = make_qcow2(src / "d.qcow2")
    answer = upload(api, disk.read_bytes(), name="web", sha256=sha256_of(disk).upper())
    assert answer.status_code == 201, answer.text


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"name": "web", "sha256": "abc"}, "sha256"),
        ({"name": "a.b"}, "name"),
        ({"name": "-x"}, "name"),
        ({"name": "web", "project": "Team A"}, "project"),
        ({"name": "x" * 60, "project": "team-a"}, "name"),
        ({"name": "web", "description": "d" * 2000}, "description"),
    ],
)
def test_bad_fields_are_400_naming_them_before_the_body_is_read(
    api: TestClient, platform: Platform, params: dict[str, str], field: str
) -> None:
    platform.projects.create("team-a")
    sent = []

    def body() -> Iterator[bytes]:
        sent.append(1)
        yield b"x" * 512

    error_of(upload(api, body(), **params), 400, "InvalidInput", field=field)
    assert sent == []
    assert_nothing_left(platform)


def test_a_body_that_is_not_octets_is_refused(api: TestClient, platform: Platform) -> None:
    answer = api.post("/v1/images/upload", params={"name": "web"}, json={"disk": "/tmp/d.qcow2"})
    error = error_of(answer, 400, "InvalidInput", field="content-type")
    assert "application/octet-stream" in error["message"]
    assert_nothing_left(platform)


def test_a_taken_name_is_409_before_the_body_is_read_and_the_image_stays(
    api: TestClient, platform: Platform, src: Path
) -> None:
    first = make_qcow2(src / "a.qcow2", data_mib=1)
    assert upload(api, first.read_bytes(), name="web").status_code == 201
    kept = platform.images.get("web")
    sent = []

    def other() -> Iterator[bytes]:
        sent.append(1)
        yield make_raw(src / "b.raw", size_mib=1).read_bytes()

    error_of(upload(api, other(), name="web"), 409, "AlreadyExists")
    assert sent == []
    assert platform.images.get("web") == kept
    platform.images.store.verify(kept)
    assert store_files(platform) == ["web.qcow2"]


def test_a_record_that_fails_takes_the_published_file_back(
    api: TestClient, platform: Platform, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Someone else recorded the name between the checks and ours (capture and VM import only look
    # at the records): their record stays, our file goes.
    def taken(self: ImageRepo, image: Any) -> None:
        raise AlreadyExists("image", image.name)

    monkeypatch.setattr(ImageRepo, "add", taken)
    error_of(upload(api, make_qcow2(src / "d.qcow2").read_bytes(), name="web"), 409, "AlreadyExists")
    assert_nothing_left(platform)


def test_a_database_lost_while_recording_leaves_the_decision_to_the_next_sweep(
    api: TestClient, platform: Platform, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The connection may have gone during COMMIT: the record may exist. The files stay (unlocked,
    # as a dead server's would) and the next sweep asks the database.
    def lost(self: ImageRepo, image: Any) -> None:
        raise DatabaseUnavailable("the database is unavailable (connection lost)")

    with monkeypatch.context() as patch:
        patch.setattr(ImageRepo, "add", lost)
        error_of(upload(api, make_qcow2(src / "d.qcow2").read_bytes(), name="web"), 503, "DatabaseUnavailable")
    left = store_files(platform)
    assert "web.qcow2" in left and any(name.endswith(".upload") for name in left), left
    assert sorted(platform.images.sweep()) == sorted(left)
    assert_nothing_left(platform)


# --- uploads and imports of one name ---------------------------------------------------------


def test_an_upload_under_way_holds_its_name(api: TestClient, platform: Platform, src: Path, small_disk: Path) -> None:
    data = make_qcow2(src / "d.qcow2").read_bytes()
    started, go_on = threading.Event(), threading.Event()

    def slow() -> Iterator[bytes]:
        yield data[:4096]
        started.set()
        go_on.wait(10)
        yield data[4096:]

    result: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: result.update(image=platform.images.upload("web", slow(), project=None, limit=LIMIT))
    )
    worker.start()
    try:
        assert started.wait(10)
        # An import of the name, and a second upload of it, are refused while it runs.
        error = error_of(api.post("/v1/images", json={"name": "web", "disk": str(small_disk)}), 409, "Conflict")
        assert "being uploaded" in error["message"]
        error_of(upload(api, data, name="web"), 409, "Conflict")
        # A sweep meanwhile leaves a live upload alone.
        assert platform.images.sweep() == []
    finally:
        go_on.set()
        worker.join(10)
    assert result["image"].sha256 == hashlib.sha256(data).hexdigest()
    assert store_files(platform) == ["web.qcow2"]


# --- a server that dies mid-upload ----------------------------------------------------------------

_DIES_MID_UPLOAD = """
import sys
from pathlib import Path
from flexvm.images.store import ImageStore

upload = ImageStore(Path(sys.argv[1])).receive("team-a.web", limit=1 << 30)
upload.__enter__()
upload.write(Path(sys.argv[2]).read_bytes())
upload.check()
upload.publish()
print("published", flush=True)
sys.stdin.read()  # killed here, between publishing the file and recording the image
"""


@pytest.mark.parametrize("was_recorded", [False, True])
def test_a_server_killed_mid_upload_leaves_what_the_next_sweep_takes_back(tmp_path: Path, was_recorded: bool) -> None:
    store = ImageStore(tmp_path / "images")
    disk = make_qcow2(tmp_path / "d.qcow2")
    child = subprocess.Popen(
        [sys.executable, "-c", _DIES_MID_UPLOAD, str(store.root), str(disk)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "published"
        staged = [path.name for path in store.root.iterdir() if path.name.endswith(".upload")]
        assert len(staged) == 1 and (store.root / "team-a.web.qcow2").exists()
        # Alive: its upload shows, and a sweep leaves it alone.
        assert store.receiving("team-a.web")
        assert store.sweep(lambda _file: False) == []
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert not store.receiving("team-a.web")
    removed = store.sweep(lambda file_name: was_recorded and file_name == "team-a.web.qcow2")
    if was_recorded:  # it died after recording the image: the file is the record's
        assert removed == staged
        assert sorted(path.name for path in store.root.iterdir()) == ["team-a.web.qcow2"]
    else:
        assert sorted(removed) == sorted([*staged, "team-a.web.qcow2"])
        assert list(store.root.iterdir()) == []


def test_a_sweep_takes_back_only_what_dead_uploads_published(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    disk = make_qcow2(tmp_path / "d.qcow2")
    # A dead upload's staging file, and a file of the same name that is not its inode.
    with store.receive("web", limit=LIMIT) as live:
        live.write(disk.read_bytes())
        live.check()
        live.publish()
        live.undecided()  # leaves the files unlocked, as a dead server would
    (store.root / "web.qcow2").unlink()
    (store.root / "web.qcow2").write_bytes(b"someone else's")
    assert [name for name in store.sweep(lambda _file: False) if not name.endswith(".upload")] == []
    assert sorted(path.name for path in store.root.iterdir()) == ["web.qcow2"]


def test_a_restart_sweeps(platform: Platform, tmp_path: Path) -> None:
    store = platform.images.store
    with store.receive("web", limit=LIMIT) as dead:
        dead.write(make_qcow2(tmp_path / "d.qcow2").read_bytes())
        dead.check()
        dead.publish()
        dead.undecided()
    assert len(list(store.root.iterdir())) == 2
    restarted = Platform.open(platform.settings)
    try:
        restarted.collect_metrics = restarted.run_scaling = False
        restarted.start()
        assert list(store.root.iterdir()) == []
    finally:
        restarted.close()


# --- the route's description ---------------------------------------------------------------------


def test_openapi_declares_the_octet_stream_body_and_the_answers(api: TestClient) -> None:
    route = api.get("/openapi.json").json()["paths"]["/v1/images/upload"]["post"]
    assert list(route["requestBody"]["content"]) == ["application/octet-stream"]
    assert {"201", "400", "409", "413"} <= set(route["responses"])
    assert {p["name"] for p in route["parameters"]} == {
        "name",
        "public",
        "project",
        "sha256",
        "cloud_init",
        "description",
    }


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_upload_prints_the_image(flexvm: Cli, platform: Platform, src: Path) -> None:
    platform.projects.create("team-a")
    disk = make_qcow2(src / "d.qcow2")
    out = flexvm.ok("image", "upload", str(disk), "--name", "web", "--project", "team-a", "--sha256", sha256_of(disk))
    assert "web" in out and sha256_of(disk) in out
    image = platform.images.get("team-a.web")
    assert (image.format, image.sha256) == ("qcow2", sha256_of(disk))
    shown = flexvm.ok("image", "upload", str(disk), "--name", "web", "--public", "--cloud-init", "-o", "json")
    assert '"name": "web"' in shown and '"cloud_init": true' in shown


def test_cli_upload_errors_are_one_line(flexvm: Cli, platform: Platform, src: Path) -> None:
    disk = make_qcow2(src / "d.qcow2")
    assert_clean_error(flexvm("image", "upload", str(disk), "--name", "web", "--project", "Bad.Name"), "project")
    assert_clean_error(flexvm("image", "upload", str(src / "missing"), "--name", "web", "--public"), "cannot read")
    (src / "notes.txt").write_text("not a disk\n")
    assert_clean_error(flexvm("image", "upload", str(src / "notes.txt"), "--name", "web", "--public"), "sectors")
    assert_nothing_left(platform)
