"""Model weights kept small and out of git: float16 storage, no checkpoints tracked, and weights
downloaded from a card's download source (progress, resume, checksum), against a loopback
HTTP server."""

from __future__ import annotations

import errno
import io
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from asdseg.cli import main
from asdseg.errors import ModelError
from asdseg.evaluation.metrics import dice
from asdseg.inference.segment import SegmentationOptions, segment_image
from asdseg.io.image_io import image_to_array
from asdseg.phantoms import make_phantom, phantom_image
from asdseg.registry import download as download_module
from asdseg.registry import (
    downloads_dir,
    fetch_weights,
    install_model,
    load_network,
    sha256_of,
    shipped_models,
)
from asdseg.registry.download import ATTEMPTS, partial_path
from asdseg.registry.model_card import ModelCard

REPOSITORY = Path(__file__).resolve().parents[2]


class WeightsServer(ThreadingHTTPServer):
    """Serves ``body`` at ``/model.pt`` with HTTP Range support. Each entry of ``cuts`` makes
    one response end after that many bytes (a dropped connection); ``ranges`` False makes it
    ignore Range headers, as some servers do. ``requests`` logs each request's Range header."""

    def __init__(self, body: bytes) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.body = body
        self.cuts: list[int] = []
        self.ranges = True
        self.requests: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/model.pt"


class RangeHandler(BaseHTTPRequestHandler):
    server: WeightsServer

    def do_GET(self) -> None:
        server = self.server
        server.requests.append(self.headers.get("Range"))
        if self.path != "/model.pt":
            self.send_error(404)
            return
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match.group(1)) if match and server.ranges else 0
        if start >= len(server.body) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(server.body)}")
            self.end_headers()
            return
        payload = server.body[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(payload)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(server.body) - 1}/{len(server.body)}")
        self.end_headers()
        cut = server.cuts.pop(0) if server.cuts else len(payload)
        self.wfile.write(payload[:cut])  # HTTP/1.0: the connection closes after the response

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(autouse=True)
def no_retry_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_module, "RETRY_PAUSE_S", 0.0)


@pytest.fixture
def remote(tiny_model: ModelCard, model_home: Path) -> Iterator[tuple[WeightsServer, ModelCard]]:
    """The tiny model's weights on a loopback server, and a card in the user's model folder that
    names them by URL and has no weights beside it."""
    server = WeightsServer(tiny_model.weights_path.read_bytes())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    folder = model_home / "models" / "remote"
    folder.mkdir(parents=True)
    data = {**tiny_model.data, "name": "remote", "weights": {**tiny_model.data["weights"], "url": server.url}}
    (folder / "card.json").write_text(json.dumps(data))
    try:
        yield server, ModelCard.load(folder / "card.json")
    finally:
        server.shutdown()
        server.server_close()


def same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    pairs = zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    return all(torch.equal(a, b) for a, b in pairs)


def test_first_use_downloads_the_weights_with_progress(
    remote: tuple[WeightsServer, ModelCard], tiny_model: ModelCard
) -> None:
    server, card = remote
    events: list[tuple[int, int, str]] = []
    path = fetch_weights(card, lambda done, total, stage: events.append((done, total, stage)))
    size = len(server.body)
    assert path == downloads_dir() / card.weights_sha256 / "model.pt"
    assert sha256_of(path) == card.weights_sha256 and not partial_path(path).exists()
    assert events[-1] == (size, size, "downloading remote") and server.requests == [None]
    assert [done for done, _, _ in events] == sorted(done for done, _, _ in events)
    assert not card.weights_path.exists()  # the card's folder is left as it was
    assert same_weights(load_network(card), load_network(tiny_model))
    assert server.requests == [None]  # loading again uses the downloaded file


def test_a_dropped_connection_resumes_where_it_broke_off(remote: tuple[WeightsServer, ModelCard]) -> None:
    server, card = remote
    cut = len(server.body) // 3
    server.cuts = [cut]
    events: list[int] = []
    path = fetch_weights(card, lambda done, total, stage: events.append(done))
    assert server.requests == [None, f"bytes={cut}-"]
    assert sha256_of(path) == card.weights_sha256
    assert events[0] < cut and cut in events and events[-1] == len(server.body)


def test_a_download_that_keeps_failing_is_resumed_by_the_next_run(
    remote: tuple[WeightsServer, ModelCard], phantom_files, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    server, card = remote
    server.cuts = [100] * ATTEMPTS
    target = downloads_dir() / card.weights_sha256 / "model.pt"
    output = tmp_path / "out" / "seg.nii.gz"
    assert main(["segment", "-i", str(phantom_files[0]), "-o", str(output), "--model", "remote"]) == 2
    error = capsys.readouterr().err
    assert f"cannot download {server.url}" in error and "run again" in error and str(target) in error
    assert not target.exists() and partial_path(target).stat().st_size == 100 * ATTEMPTS
    assert not output.exists() and len(server.requests) == ATTEMPTS

    assert main(["models", "install", "remote"]) == 0
    assert "remote (v2): weights downloaded" in capsys.readouterr().out
    assert server.requests[-1] == f"bytes={100 * ATTEMPTS}-"
    assert sha256_of(target) == card.weights_sha256 and not partial_path(target).exists()
    assert main(["models", "install", "remote"]) == 0
    assert "weights already here" in capsys.readouterr().out


def test_a_server_that_ignores_the_range_sends_the_whole_file_again(
    remote: tuple[WeightsServer, ModelCard],
) -> None:
    server, card = remote
    server.cuts, server.ranges = [100] * ATTEMPTS, False
    with pytest.raises(ModelError, match="run again"):
        fetch_weights(card, lambda *event: None)
    assert partial_path(downloads_dir() / card.weights_sha256 / "model.pt").stat().st_size == 100
    assert sha256_of(fetch_weights(card, lambda *event: None)) == card.weights_sha256


def test_a_wrong_checksum_deletes_the_download_and_says_so(
    remote: tuple[WeightsServer, ModelCard], model_home: Path
) -> None:
    server, card = remote
    server.body += b"tampered"
    with pytest.raises(ModelError, match=r"does not match the model card .* so it was deleted") as error:
        load_network(card)
    assert server.url in str(error.value)
    assert [path.name for path in downloads_dir().rglob("*") if path.is_file()] == []


def test_a_missing_file_is_not_retried_and_the_error_names_the_url(
    remote: tuple[WeightsServer, ModelCard],
) -> None:
    server, card = remote
    url = server.url.replace("model.pt", "gone.pt")
    moved = ModelCard({**card.data, "weights": {**card.data["weights"], "url": url}}, card.directory)
    with pytest.raises(ModelError, match=rf"cannot download {re.escape(url)}: HTTP Error 404.*refuses it"):
        fetch_weights(moved, lambda *event: None)
    assert server.requests == [None]


def test_a_full_disk_is_not_retried_and_the_error_names_the_file(
    remote: tuple[WeightsServer, ModelCard], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails here (no space left) is not a network failure: one request, and an
    error naming the file being written."""
    server, card = remote

    class FullDisk(io.BytesIO):
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download_module, "open", lambda *arguments: FullDisk(), raising=False)
    with pytest.raises(OSError, match="No space left on device") as error:
        fetch_weights(card, lambda *event: None)
    assert error.value.filename == str(partial_path(downloads_dir() / card.weights_sha256 / "model.pt"))
    assert server.requests == [None]


def test_an_unreachable_server_is_an_error_that_says_what_to_do(
    remote: tuple[WeightsServer, ModelCard],
) -> None:
    server, card = remote
    server.shutdown()
    server.server_close()
    with pytest.raises(ModelError, match=r"cannot download http://127\.0\.0\.1:\d+/model\.pt: .*network"):
        fetch_weights(card, lambda *event: None)


def test_the_model_list_says_which_weights_are_still_to_download(
    remote: tuple[WeightsServer, ModelCard], capsys: pytest.CaptureFixture
) -> None:
    assert main(["models"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "user folder, download on first use" in listed["remote"]
    assert "shipped " in listed["la-dan"] and "download" not in listed["la-dan"]


def test_the_card_schema_takes_only_web_addresses(tiny_model: ModelCard, tmp_path: Path) -> None:
    card = {**tiny_model.data, "weights": {**tiny_model.data["weights"], "url": "file:///etc/passwd"}}
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"not a valid model card: at weights.url"):
        ModelCard.load(tmp_path / "card.json")


# Half precision ------------------------------------------------------------------------------


def float_dtypes(path: Path) -> set[torch.dtype]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {tensor.dtype for tensor in state.values() if tensor.is_floating_point()}


def test_installed_float16_weights_keep_the_float32_models_dice(demo_model: ModelCard) -> None:
    """The demo's trained VNet (float32) installed as float16 and loaded back as float32 segments
    a held-out phantom as the float32 one does, to 0.01 Dice."""
    installed = install_model(demo_model.directory / "card.json")
    assert float_dtypes(demo_model.weights_path) == {torch.float32}
    assert float_dtypes(installed.weights_path) == {torch.float16}
    assert installed.weights_path.stat().st_size < 0.6 * demo_model.weights_path.stat().st_size
    full, half = load_network(demo_model), load_network(installed)
    assert {parameter.dtype for parameter in half.parameters()} == {torch.float32}
    assert not same_weights(full, half)  # the rounding happened

    image, reference = phantom_image(make_phantom(seed=101))  # training draws seeds 1000+
    truth = image_to_array(reference, np.int64)
    options = SegmentationOptions(device="cpu")
    full_labels = segment_image(image, demo_model, full, options).label_array()
    half_labels = segment_image(image, installed, half, options).label_array()
    for value in (1, 2):
        full_dice = dice(full_labels == value, truth == value)
        assert full_dice > 0.8, "the float32 model must segment the phantom for the comparison to mean much"
        assert abs(dice(half_labels == value, truth == value) - full_dice) < 0.01
        assert dice(half_labels == value, full_labels == value) > 0.99


# What git keeps --------------------------------------------------------------------------------


def git(*arguments: str) -> subprocess.CompletedProcess:
    if shutil.which("git") is None or not (REPOSITORY / ".git").exists():
        pytest.skip("not a git checkout")
    return subprocess.run(["git", *arguments], cwd=REPOSITORY, capture_output=True, text=True, check=False)


def test_git_tracks_no_checkpoint_and_only_the_shipped_float16_weights() -> None:
    tracked = git("ls-files").stdout.splitlines()
    suffixes = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
    weights = {name for name in tracked if Path(name).suffix in suffixes}
    shipped = {str(card.weights_path.relative_to(REPOSITORY)) for card in shipped_models().values()}
    assert weights == shipped, "commit a released model (card + float16 weights), never a checkpoint"
    for name in sorted(weights):
        assert float_dtypes(REPOSITORY / name) == {torch.float16}, name
    ignored = git("check-ignore", "runs/la/checkpoint.pt", "runs/la/last.ckpt", "model.pt.part").stdout
    assert ignored.split() == ["runs/la/checkpoint.pt", "runs/la/last.ckpt", "model.pt.part"]
