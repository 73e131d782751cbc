"""The whole chain through the command line: synth, three teachers, the two-stage student, eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unweather.cli import main

WEATHERS = ("rain", "snow", "haze")
# A network small enough that the chain runs in seconds; the student is smaller than its teachers.
TEACHER = ["--set", "model.options={widths: [4, 8, 8, 8], context_channels: 4}"]
STUDENT = ["--set", "model.options={widths: [4, 4, 8, 8], context_channels: 4}"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    """synth -> three teachers -> student (KC then KE), all with `--preset tiny`."""
    import cv2

    root = tmp_path_factory.mktemp("chain")
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:72, 0:88]
    photos = root / "photos"
    photos.mkdir()
    for i in range(3):
        image = np.stack([(xx * (i + 2)) % 255, (yy * 2 + 50 * i) % 255, (xx + 2 * yy) % 255], -1)
        image = (image + rng.integers(0, 16, image.shape)).clip(0, 255).astype(np.uint8)
        cv2.imwrite(str(photos / f"photo{i}.png"), image)
    data = root / "data"
    assert main(["synth", str(photos), "-o", str(data), "--crops", "2", "--size", "32",
                 "--valid-fraction", "0.34", "--clean-pairs", "1"]) == 0
    out = {"root": root, "data": data}
    for weather in WEATHERS:
        out[weather] = root / f"teacher_{weather}.safetensors"
        assert main(["train", "teacher", "--weather", weather, "--meta-dir", str(data), "-o", str(out[weather]),
                     "--preset", "tiny", "--model", "student_small", *TEACHER,
                     "--run-dir", str(root / "runs" / weather)]) == 0
    out["student"] = root / "student.safetensors"
    # Bare paths: paired by the weather each teacher's metadata records, in command-line order.
    assert main(["train", "student", "--teachers", str(out["snow"]), str(out["haze"]), str(out["rain"]),
                 "--meta-dir", str(data), "-o", str(out["student"]), "--preset", "tiny",
                 "--model", "student_small", *STUDENT, "--run-dir", str(root / "runs" / "student")]) == 0
    return out


def test_teachers_record_their_weather_and_run(chain):
    from unweather.models import load_checkpoint, read_metadata

    for weather in WEATHERS:
        meta = read_metadata(chain[weather])
        assert meta["role"] == "teacher" and json.loads(meta["weathers"]) == [weather]
        assert json.loads(meta["run_config"])["preset"] == "tiny"
        assert "val_psnr" in meta and meta["stage"] == "teacher"
        net = load_checkpoint(chain[weather])
        assert net.tap_channels == (8, 8, 8, 8)
        run = chain["root"] / "runs" / weather
        assert (run / "config.yaml").is_file() and (run / "config.json").is_file()
        assert (run / "metrics.jsonl").read_text().count("\n") >= 2


def test_student_went_through_both_stages(chain):
    from unweather.models import load_checkpoint, read_metadata

    meta = read_metadata(chain["student"])
    assert meta["role"] == "student" and meta["training"] == "kc+ke"
    assert json.loads(meta["weathers"]) == ["snow", "haze", "rain"]
    run = chain["root"] / "runs" / "student"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = {k for r in records if r.get("stage") == "kc" for k in r}
    assert {"loss/pixel", "loss/pfe", "loss/pfv", "loss/scr"} <= losses
    assert {"loss/pixel", "loss/hcr"} <= {k for r in records if r.get("stage") == "ke" for k in r}
    assert any("val/psnr/clean" in r for r in records)
    assert max(r["step"] for r in records) == 6
    ckt = chain["root"] / "student.ckt.safetensors"
    assert ckt.is_file()
    from safetensors import safe_open

    with safe_open(str(ckt), "pt") as f:
        assert f.metadata()["role"] == "ckt" and any("student_projector" in k for k in f.keys())  # noqa: SIM118
    student = load_checkpoint(chain["student"])
    x = torch.rand(1, 3, 48, 40)
    assert student(torch.nn.functional.pad(x, (0, 8, 0, 0)))[..., :40].shape == x.shape


def test_eval_scores_the_student(chain, tmp_path):
    report = tmp_path / "scores.json"
    assert main(["eval", "--model", str(chain["student"]), "--meta-dir", str(chain["data"]),
                 "--json", str(report), "--device", "cpu"]) == 0
    scores = json.loads(report.read_text())["datasets"]
    assert set(WEATHERS) <= set(scores)
    for weather in WEATHERS:
        assert np.isfinite(scores[weather]["psnr_rgb"]) and np.isfinite(scores[weather]["psnr_y"])


def test_resume_and_errors(chain, tmp_path, capsys):
    data, root = chain["data"], chain["root"]
    out = tmp_path / "again.safetensors"
    teachers = [f"{w}={chain[w]}" for w in WEATHERS]
    common = ["--meta-dir", str(data), "-o", str(out), "--preset", "tiny", "--model", "student_small", *STUDENT]
    # A teacher paired with another weather's data set is refused.
    swapped = [f"rain={chain['snow']}", f"snow={chain['rain']}", f"haze={chain['haze']}"]
    assert main(["train", "student", "--teachers", *swapped, *common]) == 1
    assert "trained on snow" in capsys.readouterr().err
    assert main(["train", "student", "--teachers", *teachers[:2], *common]) == 1
    assert "has no teacher" in capsys.readouterr().err
    assert main(["train", "student", "--teachers", *teachers, "--mcr", "vgg19", *common]) == 1
    assert "vgg19" in capsys.readouterr().err
    # An existing run is not overwritten without --resume; --resume on a finished run just exports.
    run = ["--run-dir", str(root / "runs" / "student")]
    assert main(["train", "student", "--teachers", *teachers, *common, *run]) == 1
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "student", "--teachers", *teachers, *common, *run, "--resume"]) == 1
    assert "in that order" in capsys.readouterr().err
    same_order = [str(chain[w]) for w in ("snow", "haze", "rain")]
    assert main(["train", "student", "--teachers", *same_order, *common, *run, "--resume"]) == 0
    assert out.is_file()


def test_direct_baseline(chain, tmp_path):
    from unweather.models import read_metadata

    out = tmp_path / "direct.safetensors"
    assert main(["train", "student", "--direct", "--meta-dir", str(chain["data"]), "-o", str(out),
                 "--preset", "tiny", "--model", "student_small", *STUDENT,
                 "--run-dir", str(tmp_path / "run")]) == 0
    meta = read_metadata(out)
    assert meta["training"] == "direct" and sorted(json.loads(meta["weathers"])) == sorted(WEATHERS)
    assert not (tmp_path / "direct.ckt.safetensors").exists()


def test_init_continues_a_student_and_refuses_another_shape(chain, tmp_path, capsys):
    from unweather.models import load_checkpoint, read_metadata

    teachers = [str(chain[w]) for w in WEATHERS]
    common = ["train", "student", "--teachers", *teachers, "--meta-dir", str(chain["data"]), "--preset", "tiny",
              "--model", "student_small", *STUDENT, "--kc-steps", "0", "--ke-steps", "2"]
    out = tmp_path / "more.safetensors"
    assert main([*common, "--init", str(chain["student"]), "-o", str(out), "--run-dir", str(tmp_path / "a"),
                 "--set", "log.output=last", "--set", "optim.lr=1e-12"]) == 0
    assert read_metadata(out)["init"] == str(chain["student"])
    # With a vanishing learning rate the continued network is the one it started from.
    before, after = load_checkpoint(chain["student"]).state_dict(), load_checkpoint(out).state_dict()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    capsys.readouterr()
    assert main([*common, "--init", str(chain["rain"]), "-o", str(tmp_path / "x.safetensors"),
                 "--run-dir", str(tmp_path / "b")]) == 1
    assert "does not fit student_small" in capsys.readouterr().err


def test_init_adds_the_haze_head_neutral(chain, tmp_path, capsys):
    from unweather.models import load_checkpoint

    out = tmp_path / "haze.safetensors"
    haze = ["--set", "model.options={widths: [4, 4, 8, 8], context_channels: 4, haze_head: true}"]
    assert main(["train", "student", "--direct", "--meta-dir", str(chain["data"]), "--preset", "tiny",
                 "--model", "student_small", *haze, "--kc-steps", "0", "--ke-steps", "2",
                 "--init", str(chain["student"]), "-o", str(out), "--run-dir", str(tmp_path / "run"),
                 "--set", "log.output=last", "--set", "optim.lr=1e-12"]) == 0
    assert "new layers start neutral: haze" in "".join(capsys.readouterr())
    before, after = load_checkpoint(chain["student"]).eval(), load_checkpoint(out).eval()
    assert after.config.haze_head and not before.config.haze_head
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(after(x), before(x), atol=1e-5, rtol=0)


def test_sigint_saves_a_checkpoint_and_resume_continues(chain, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    out = tmp_path / "t.safetensors"
    command = [sys.executable, "-m", "unweather.cli", "train", "teacher", "--weather", "rain", "--meta-dir",
               str(chain["data"]), "-o", str(out), "--preset", "tiny", "--model", "student_small", *TEACHER,
               "--steps", "100000", "--val-every", "100000", "--threads", "1", "--run-dir", str(run)]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    step = json.loads((run / "last.json").read_text())["step"]
    assert step >= 1 and not out.exists()
    # Resuming it with another length is refused (the schedule depends on it).
    assert main(["train", "teacher", "--weather", "rain", "--meta-dir", str(chain["data"]), "-o", str(out),
                 "--preset", "tiny", "--model", "student_small", *TEACHER, "--steps", str(step + 2),
                 "--run-dir", str(run), "--resume"]) == 1


def test_sigkill_loses_at_most_the_checkpoint_interval(chain, tmp_path):
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    # A checkpoint at every log interval (0.0001 min): a killed run resumes past step 0.
    command = [sys.executable, "-m", "unweather.cli", "train", "teacher", "--weather", "rain", "--meta-dir",
               str(chain["data"]), "-o", str(tmp_path / "t.safetensors"), "--preset", "tiny", "--model",
               "student_small", *TEACHER, "--steps", "100000", "--val-every", "100000", "--threads", "1",
               "--run-dir", str(run), "--set", "log.checkpoint_minutes=0.0001"]

    def start_then_kill(args: list[str], until) -> str:
        proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not until():
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            proc.kill()
            _, err = proc.communicate(timeout=60)
        return err

    def step() -> int:
        return json.loads((run / "last.json").read_text())["step"] if (run / "last.json").is_file() else 0

    start_then_kill(command, lambda: step() >= 4)
    killed_at = step()
    assert killed_at >= 4
    err = start_then_kill([*command, "--resume"], lambda: step() > killed_at)
    assert f"at step {killed_at} of 100000" in err
