"""examples/mnist_numba.py end to end, on small IDX folders the tests write."""

import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import synthetic_digits
from test_data import write_idx_folder

from numba_dsconv import data, nn

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "mnist_numba.py"


# No GPU visible and no simulator: --device cuda must then say so, on any machine.
NO_GPU = {"CUDA_VISIBLE_DEVICES": "", "NUMBA_ENABLE_CUDASIM": "0"}


def run_example(*args, env=None):
    result = subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=600,
                            env=os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {}))
    return result


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    write_idx_folder(folder, synthetic_digits(train=160, test=64, seed=2))
    return folder


def _metrics(out):
    with open(out / "metrics.json") as handle:
        return json.load(handle)


def test_trains_writes_every_output_and_resumes(digits_folder, tmp_path):
    out = tmp_path / "run"
    first = run_example("--data", str(digits_folder), "--epochs", "1", "--batch-size", "32", "--out", str(out),
                        "--seed", "5")
    assert first.returncode == 0, first.stderr
    assert "epoch 1/1" in first.stdout and "loss" in first.stdout
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "curves.png", "metrics.json", "model.npz"]
    metrics = _metrics(out)
    assert metrics["dataset"] == digits_folder.name
    (entry,) = metrics["epochs"]
    assert set(entry) == {"epoch", "train_loss", "train_accuracy", "test_accuracy", "seconds"}
    assert entry["epoch"] == 1 and 0 <= entry["test_accuracy"] <= 1 and entry["seconds"] > 0
    for png in ("curves.png", "confusion.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    umask = os.umask(0)
    os.umask(umask)
    for name in ("metrics.json", "model.npz"):  # ordinary files, not owner-only temporaries
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask
    model = nn.load_model(out / "model.npz")
    images = data.load_idx_folder(digits_folder).test_images
    mean, std = nn.pixel_statistics(data.load_idx_folder(digits_folder).train_images)
    accuracy = (nn.predict(model, images, mean=mean, std=std) == data.load_idx_folder(digits_folder).test_labels)
    assert float(accuracy.mean()) == pytest.approx(entry["test_accuracy"])

    resumed = run_example("--data", str(digits_folder), "--epochs", "2", "--batch-size", "32", "--out", str(out),
                          "--seed", "5", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "epoch 2/2" in resumed.stdout
    epochs = _metrics(out)["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2] and epochs[0] == entry


def test_same_seed_same_metrics(digits_folder, tmp_path):
    runs = []
    for name in ("a", "b"):
        result = run_example("--data", str(digits_folder), "--epochs", "2", "--batch-size", "32", "--out",
                             str(tmp_path / name), "--no-plots")
        assert result.returncode == 0, result.stderr
        runs.append([{k: v for k, v in e.items() if k != "seconds"} for e in _metrics(tmp_path / name)["epochs"]])
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "cuda"], "no usable GPU"),
        (["--resume"], "no checkpoint"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--data", "/nonexistent/folder"], "does not exist"),
    ],
)
def test_bad_invocations_say_what_is_wrong(digits_folder, tmp_path, args, message):
    full = ["--out", str(tmp_path / "out"), *args]
    if "--data" not in args:
        full = ["--data", str(digits_folder), *full]
    result = run_example(*full, env=NO_GPU)
    assert result.returncode != 0
    assert message in result.stderr


def _load_example():
    spec = importlib.util.spec_from_file_location("mnist_numba_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_arguments_fall_back_to_mnist5k_when_offline(monkeypatch, tmp_path, capsys):
    example = _load_example()
    offline = data.DownloadError("train-images-idx3-ubyte.gz", [("https://mirror/x", "Name or service not known")])

    def no_network(*args, **kwargs):
        raise offline

    small = synthetic_digits(train=40, test=20, seed=4)
    small.name = "mnist5k"
    monkeypatch.setattr(example.data, "load_mnist", no_network)
    monkeypatch.setattr(example.data, "load_mnist5k", lambda: small)
    monkeypatch.chdir(tmp_path)
    example.main(["--epochs", "1", "--no-plots"])
    lines = capsys.readouterr().out.splitlines()
    offline_lines = [line for line in lines if line.startswith("offline:")]
    assert len(offline_lines) == 1 and "mnist5k" in offline_lines[0]
    assert _metrics(tmp_path / "runs" / "mnist5k")["dataset"] == "mnist5k"
    np.testing.assert_equal(len(_metrics(tmp_path / "runs" / "mnist5k")["epochs"]), 1)


def test_interrupted_run_keeps_its_last_epoch_and_resumes(digits_folder, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, str(EXAMPLE), "--data", str(digits_folder), "--epochs", "50", "--batch-size", "32",
               "--out", str(out), "--no-plots"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=os.environ | {"PYTHONUNBUFFERED": "1"})
    try:
        for line in process.stdout:
            if line.startswith("epoch 1/50:"):
                process.send_signal(signal.SIGINT)
                break
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode != 0
    assert "interrupted; run again with --resume" in stderr
    done = len(_metrics(out)["epochs"])
    assert 1 <= done < 50
    nn.load_checkpoint(out / "model.npz", nn.dscnn())  # intact
    resumed = run_example("--data", str(digits_folder), "--epochs", str(done + 1), "--batch-size", "32", "--out",
                          str(out), "--no-plots", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert [e["epoch"] for e in _metrics(out)["epochs"]] == list(range(1, done + 2))
