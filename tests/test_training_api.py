"""Training through the Python API, without the command line, and the same run through `unweather train`.

The data set is conftest's `meta_dir` (3 photos, 32 px crops, rain/snow/haze and a clean set)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unweather.errors import UnweatherError
from unweather.training import api
from unweather.training import config as config_mod

WEATHERS = ("rain", "snow", "haze")
TEACHER_OPTIONS = {"widths": [4, 8, 8, 8], "context_channels": 4}
STUDENT_OPTIONS = {"widths": [4, 4, 8, 8], "context_channels": 4}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(meta_dir: Path, options: dict, teacher: bool = False) -> config_mod.TrainConfig:
    cfg = config_mod.load("tiny")
    if teacher:
        cfg = config_mod.teacher_config(cfg)
    cfg.model.options = dict(options)
    cfg.data.meta_dir = str(meta_dir)
    return cfg


def test_teachers_then_student_through_the_api(meta_dir, tmp_path):
    from unweather.models import load_checkpoint, read_metadata

    teachers = {}
    for weather in WEATHERS:
        out = tmp_path / f"t_{weather}.safetensors"
        written = api.train_teacher(_cfg(meta_dir, TEACHER_OPTIONS, teacher=True), weather, out,
                                    run_dir=tmp_path / "runs" / weather, device="cpu")
        assert written == out and out.is_file()
        meta = read_metadata(out)
        assert meta["role"] == "teacher" and json.loads(meta["weathers"]) == [weather]
        assert json.loads((tmp_path / "runs" / weather / "result.json").read_text())["step"] == 4
        teachers[weather] = out

    cfg = _cfg(meta_dir, STUDENT_OPTIONS)
    out = api.train_student(cfg, tmp_path / "student.safetensors", teachers=teachers,
                            run_dir=tmp_path / "runs" / "student", device="cpu")
    meta = read_metadata(out)
    assert meta["training"] == "kc+ke" and json.loads(meta["weathers"]) == list(WEATHERS)
    assert json.loads(meta["teachers"]) == {w: str(p) for w, p in teachers.items()}
    assert json.loads(meta["run_config"]) == cfg.to_dict()
    run = tmp_path / "runs" / "student"
    assert json.loads((run / "config.json").read_text()) == cfg.to_dict()
    stages = {json.loads(line).get("stage") for line in (run / "metrics.jsonl").read_text().splitlines()}
    assert {"kc", "ke"} <= stages
    assert api.ckt_output(out) == tmp_path / "student.ckt.safetensors" and api.ckt_output(out).is_file()
    assert load_checkpoint(out).arch == "student_small"

    # The run directory holds a run: refused without resume, exported again with it.
    with pytest.raises(UnweatherError, match="already holds a run"):
        api.train_student(cfg, tmp_path / "again.safetensors", teachers=teachers, run_dir=run, device="cpu")
    again = api.train_student(cfg, tmp_path / "again.safetensors", teachers=list(teachers.values()),
                              run_dir=run, resume=True, device="cpu")
    assert read_metadata(again)["steps"] == meta["steps"]


def test_direct_student_needs_no_teachers_and_init_continues_it(meta_dir, tmp_path):
    from unweather.models import load_checkpoint, read_metadata

    cfg = _cfg(meta_dir, STUDENT_OPTIONS)
    first = api.train_student(cfg, tmp_path / "direct.safetensors", direct=True, run_dir=tmp_path / "a",
                              device="cpu")
    meta = read_metadata(first)
    assert meta["training"] == "direct" and sorted(json.loads(meta["weathers"])) == sorted(WEATHERS)
    assert not api.ckt_output(first).exists()
    with pytest.raises(UnweatherError, match="needs --teachers"):
        api.train_student(cfg, tmp_path / "x.safetensors", run_dir=tmp_path / "x", device="cpu")

    cfg.schedule.kc_steps, cfg.schedule.ke_steps = 0, 2
    cfg.optim.lr, cfg.log.output = 1e-12, "last"
    more = api.train_student(cfg, tmp_path / "more.safetensors", direct=True, init=first,
                             run_dir=tmp_path / "b", device="cpu")
    assert read_metadata(more)["init"] == str(first)
    before, after = load_checkpoint(first).state_dict(), load_checkpoint(more).state_dict()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)


def test_the_command_line_trains_what_the_api_trains(meta_dir, tmp_path):
    from unweather.cli import main
    from unweather.models import load_checkpoint, read_metadata

    cfg = _cfg(meta_dir, TEACHER_OPTIONS, teacher=True)
    by_api = api.train_teacher(cfg, "snow", tmp_path / "api.safetensors", run_dir=tmp_path / "api", device="cpu")
    by_cli = tmp_path / "cli.safetensors"
    assert main(["train", "teacher", "--weather", "snow", "--meta-dir", str(meta_dir), "-o", str(by_cli),
                 "--preset", "tiny", "--set", "model.options={widths: [4, 8, 8, 8], context_channels: 4}",
                 "--run-dir", str(tmp_path / "cli"), "--device", "cpu", "--no-progress"]) == 0
    a, b = load_checkpoint(by_api).state_dict(), load_checkpoint(by_cli).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_metadata(by_api)["run_config"] == read_metadata(by_cli)["run_config"]
    assert (tmp_path / "api" / "config.json").read_text() == (tmp_path / "cli" / "config.json").read_text()


def test_teachers_must_be_a_collection():
    assert api.teacher_specs({"rain": Path("r.safetensors")}) == ["rain=r.safetensors"]
    assert api.teacher_specs([Path("r.safetensors"), "snow=s.safetensors"]) == ["r.safetensors", "snow=s.safetensors"]
    with pytest.raises(UnweatherError, match="mapping"):
        api.teacher_specs("r.safetensors")
    assert api.default_run_dir("out/student.safetensors") == Path("runs") / "student"


def test_a_teacher_can_start_from_a_trained_network_of_its_architecture(meta_dir, tmp_path):
    from unweather.cli import main
    from unweather.models import load_checkpoint, read_metadata

    cfg = _cfg(meta_dir, TEACHER_OPTIONS, teacher=True)
    first = api.train_teacher(cfg, "rain", tmp_path / "first.safetensors", run_dir=tmp_path / "a", device="cpu")
    cfg.optim.lr, cfg.log.output = 1e-12, "last"
    again = api.train_teacher(cfg, "rain", tmp_path / "again.safetensors", run_dir=tmp_path / "b", device="cpu",
                              init=first)
    assert read_metadata(again)["init"] == str(first)
    before, after = load_checkpoint(first).state_dict(), load_checkpoint(again).state_dict()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)
    # Another architecture is refused in one line, before any step.
    other = api.train_student(_cfg(meta_dir, STUDENT_OPTIONS), tmp_path / "s.safetensors", direct=True,
                              run_dir=tmp_path / "s", device="cpu")
    assert main(["train", "teacher", "--weather", "rain", "--meta-dir", str(meta_dir), "--preset", "tiny",
                 "--init", str(other), "-o", str(tmp_path / "x.safetensors"), "--run-dir", str(tmp_path / "x"),
                 "--device", "cpu", "--no-progress"]) == 1
    assert not (tmp_path / "x.safetensors").exists()
