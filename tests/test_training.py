"""Training: batches, teacher pairing, every stage's gradients, frozen teachers, resume, config."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from unweather.errors import UnweatherError
from unweather.training import config as config_mod
from unweather.training import data
from unweather.training.tasks import DirectTask, KCTask, KETask, StudentWithCKT, TeacherTask
from unweather.training.trainer import Stage, Trainer, lr_factor, param_groups

WEATHERS = ["haze", "rain", "snow"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cfg() -> config_mod.TrainConfig:
    cfg = config_mod.preset("tiny")
    cfg.data.crop = 32
    return cfg


def test_presets_and_overrides(tmp_path):
    paper = config_mod.preset("paper")
    assert (paper.optim.lr, paper.optim.scale_lr_by_batch, paper.optim.betas) == (2e-4, True, (0.9, 0.999))
    assert (paper.data.crop, paper.schedule.kc_epochs, paper.schedule.ke_epochs) == (224, 125, 125)
    assert (paper.schedule.warmup_epochs, paper.schedule.val_every_epochs, paper.log.keep_best) == (3, 2, 3)
    assert paper.loss.mcr == "vgg19" and paper.loss.scr_positive == "teacher"
    assert (paper.loss.pfv, paper.loss.scr, paper.loss.hcr) == (0.05, 0.1, 0.2)
    assert config_mod.preset("cpu").loss.mcr == "teacher"
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("preset: tiny\noptim:\n  lr: 0.01\ndata:\n  crop: 48\n")
    cfg = config_mod.load("cpu", yaml_file, ["loss.mcr=none", "data.flip=false"])
    assert (cfg.preset, cfg.optim.lr, cfg.data.crop, cfg.loss.mcr, cfg.data.flip) == ("tiny", 0.01, 48, "none", False)
    with pytest.raises(UnweatherError, match="unknown configuration field"):
        config_mod.load("cpu", None, ["optim.learning_rate=1"])
    with pytest.raises(UnweatherError, match="not a valid int"):
        config_mod.load("cpu", None, ["data.crop=big"])
    config_mod.save(cfg, tmp_path / "run")
    assert config_mod.from_dict(json.loads((tmp_path / "run" / "config.json").read_text())).to_dict() == cfg.to_dict()


def test_lr_schedule_warms_up_then_decays_to_min():
    values = [lr_factor(s, 100, 10, 0.01) for s in range(101)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))
    assert values[100] == pytest.approx(0.01)


def test_lr_scale_gives_named_layers_their_own_rate():
    from unweather.models import build

    body = StudentWithCKT(build("student_small", haze_head=True), None)
    groups = param_groups(body, 1e-4, {"haze": 20})
    by_lr = {g["lr"]: g["params"] for g in groups}
    haze = {id(p) for p in body.student.haze.parameters()}
    assert sorted(by_lr) == [1e-4, pytest.approx(2e-3)]
    assert {id(p) for p in by_lr[max(by_lr)]} == haze
    assert len(by_lr[1e-4]) + len(haze) == len(list(body.parameters()))
    # A name that matches no layer is a typo, not a silent no-op.
    with pytest.raises(UnweatherError, match="gain2"):
        param_groups(body, 1e-4, {"gain2": 5})
    assert len(param_groups(body, 1e-4, {})) == 1


def test_resynth_renders_fresh_inputs_from_the_ground_truth(meta_dir):
    train, _ = data.split_clean(data.load_pairs(meta_dir, "train"))
    cfg = tiny_cfg().data
    cfg.flip = False
    stored = data.WeatherBatches(train, cfg, seed=3, per_weather=2, clean=0)
    cfg_fresh = config_mod.apply_mapping(tiny_cfg(), {"data": {"resynth": "haze", "flip": False}}).data
    assert cfg_fresh.resynth == ["haze"]
    fresh = data.WeatherBatches(train, cfg_fresh, seed=3, per_weather=2, clean=0)
    haze = slice(0, 2)
    a, b = stored.batch(0), fresh.batch(0)
    assert torch.equal(a.targets, b.targets)
    assert torch.equal(a.inputs[2:], b.inputs[2:])  # rain and snow are read as stored
    assert not torch.equal(a.inputs[haze], b.inputs[haze])
    assert torch.equal(b.inputs[haze], fresh.batch(0).inputs[haze])  # a function of (seed, step)
    # Haze veils towards a bright airlight: the fresh input is brighter and flatter than its ground truth.
    gt, hazy = b.targets[haze].float(), b.inputs[haze].float()
    assert (hazy.mean() > gt.mean()) and hazy.std() < gt.std()
    # The same pair on a later pass gets a different rendering.
    n = len(train["haze"])
    later = next(s for s in range(1, 50) if fresh.plan(s)[0][1] == fresh.plan(0)[0][1])
    assert later * 2 >= n and not torch.equal(fresh.batch(later).inputs[0], b.inputs[0])
    # Recolouring changes the haze ground truths only: channel order and exposure (at most 1).
    cfg_fresh.resynth_recolour = True
    recoloured = data.WeatherBatches(train, cfg_fresh, seed=3, per_weather=2, clean=0).batch(0)
    assert torch.equal(recoloured.targets[2:], a.targets[2:])
    new, old = recoloured.targets[haze].float(), a.targets[haze].float()
    assert not torch.equal(new, old)
    for i in range(2):
        exposure = new[i].sum() / old[i].sum()
        assert 0.5 - 0.01 <= exposure <= 1.0 + 1e-6
        assert sorted((new[i].mean(dim=(1, 2)) / exposure).tolist()) == pytest.approx(
            sorted(old[i].mean(dim=(1, 2)).tolist()), abs=0.6)
    # Clean pairs are recoloured alike (input = target), so odd colours alone do not mean haze.
    train_all, clean = data.split_clean(data.load_pairs(meta_dir, "train"))
    plain = data.WeatherBatches(train_all, cfg, seed=3, per_weather=1, clean=2, clean_paths=clean)
    mixed = data.WeatherBatches(train_all, cfg_fresh, seed=3, per_weather=1, clean=2, clean_paths=clean)
    p, m = plain.batch(0), mixed.batch(0)
    assert torch.equal(m.inputs[3:], m.targets[3:]) and not torch.equal(m.targets[3:], p.targets[3:])
    with pytest.raises(UnweatherError, match="resynth"):
        cfg_fresh.resynth = ["fog"]
        data.WeatherBatches(train, cfg_fresh, seed=3)


def test_every_batch_holds_every_weather(meta_dir):
    train, clean = data.split_clean(data.load_pairs(meta_dir, "train"))
    assert sorted(train) == WEATHERS and clean
    cfg = tiny_cfg().data
    batches = data.WeatherBatches(train, cfg, seed=3, per_weather=3, clean=2, clean_paths=clean)
    for step in range(12):
        batch = batches.batch(step)
        assert [g[0] for g in batch.groups] == [*WEATHERS, data.CLEAN]
        assert [g[2] - g[1] for g in batch.groups] == [3, 3, 3, 2]
        assert batch.inputs.shape == (11, 3, 32, 32) and batch.inputs.dtype == torch.uint8
        assert [s[0] for s in batches.plan(step)] == [w for w in WEATHERS for _ in range(3)] + [data.CLEAN] * 2
        # Clean pairs: input is the target.
        assert torch.equal(batch.inputs[9:], batch.targets[9:])
    # Batch s depends only on (seed, s): resuming draws the same batches.
    again = data.WeatherBatches(train, cfg, seed=3, per_weather=3, clean=2, clean_paths=clean)
    assert torch.equal(again.batch(7).inputs, batches.batch(7).inputs)
    # One pass of a weather's pairs visits each pair once.
    n = len(train["rain"])
    plan_rain = [p for s in range(-(-n // 3)) for p in batches.plan(s) if p[0] == "rain"][:n]
    assert sorted(p[2] for p in plan_rain) == sorted(d for _, d in train["rain"])


def test_teacher_pairing_is_explicit_and_checked():
    meta = {Path("a.safetensors"): {"weathers": '["rain"]'}, Path("b.safetensors"): {"weathers": '["snow"]'},
            Path("c.safetensors"): {}}
    sets = ["rain", "snow"]
    assert data.pair_teachers(["a.safetensors", "b.safetensors"], sets, meta) == [
        ("rain", Path("a.safetensors")), ("snow", Path("b.safetensors"))]
    # Order follows the command line, never file names.
    assert data.pair_teachers(["snow=b.safetensors", "rain=a.safetensors"], sets, meta)[0][0] == "snow"
    assert data.pair_teachers(["rain=c.safetensors", "snow=b.safetensors"], sets, meta)[0] == (
        "rain", Path("c.safetensors"))
    with pytest.raises(UnweatherError, match="trained on rain"):
        data.pair_teachers(["snow=a.safetensors", "rain=b.safetensors"], sets, meta)
    with pytest.raises(UnweatherError, match="name it explicitly"):
        data.pair_teachers(["c.safetensors", "b.safetensors"], sets, meta)
    with pytest.raises(UnweatherError, match="more than one teacher"):
        data.pair_teachers(["a.safetensors", "rain=c.safetensors"], sets, meta)
    with pytest.raises(UnweatherError, match="has no teacher"):
        data.pair_teachers(["a.safetensors"], sets, meta)
    with pytest.raises(UnweatherError, match="no data set"):
        data.pair_teachers(["a.safetensors", "b.safetensors", "haze=c.safetensors"], sets, meta)


# -- student stages ------------------------------------------------------------------------------------


def tiny_net(width: int) -> nn.Module:
    """A student-family network small enough for tests (taps at 1/4, 1/8, 1/16, 1/16)."""
    from unweather.models import build

    return build("student_small", widths=(4, width, width, width), context_channels=4)


def make_ckt(teacher_channels, student_channels, num_teachers) -> nn.Module:
    from unweather.models.ckt import CKT

    return CKT(teacher_channels, student_channels, num_teachers)


def grads_of(module: nn.Module) -> dict[str, bool]:
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in module.named_parameters()}


def student_setup(meta_dir: Path, mcr: str = "teacher"):
    train, clean = data.split_clean(data.load_pairs(meta_dir, "train"))
    cfg = tiny_cfg()
    cfg.loss.mcr = mcr
    batches = data.WeatherBatches(train, cfg.data, seed=0, clean_paths=clean)
    teachers = [(w, tiny_net(8)) for w in WEATHERS]
    student = tiny_net(4)
    body = StudentWithCKT(student, make_ckt(list(teachers[0][1].tap_channels), list(student.tap_channels), 3))
    return cfg, batches, teachers, body


@pytest.mark.parametrize("mcr", ["teacher", "vgg19", "none"])
def test_kc_stage_trains_student_and_ckt_not_teachers(meta_dir, mcr):
    from unweather.training.vgg import VGG19Features

    cfg, batches, teachers, body = student_setup(meta_dir, mcr)
    cfg.loss.pixel_balance = "input"
    features = VGG19Features(weights=None) if mcr == "vgg19" else None
    task = KCTask(body, teachers, cfg.loss, features)
    before = {w: {k: v.clone() for k, v in t.state_dict().items()} for w, t in teachers}
    terms = task(batches.batch(0).to("cpu"))
    assert set(terms) == ({"pixel", "pfe", "pfv"} | ({"scr"} if mcr != "none" else set()))
    sum(terms.values()).backward()
    missing = [n for n, ok in grads_of(body).items() if not ok]
    assert not missing, f"no gradient: {missing}"
    for _, t in teachers:
        assert all(p.grad is None for p in t.parameters())
        assert not t.training
    torch.optim.Adam(body.parameters(), lr=1e-2).step()
    for w, t in teachers:
        for k, v in t.state_dict().items():
            assert torch.equal(v, before[w][k])


@pytest.mark.parametrize("mcr", ["teacher", "vgg19"])
def test_ke_stage_trains_the_student_only(meta_dir, mcr):
    from unweather.training.vgg import VGG19Features

    cfg, batches, teachers, body = student_setup(meta_dir, mcr)
    features = VGG19Features(weights=None) if mcr == "vgg19" else None
    task = KETask(body, teachers, cfg.loss, features)
    terms = task(batches.batch(1).to("cpu"))
    assert set(terms) == {"pixel", "hcr"}
    sum(terms.values()).backward()
    assert all(grads_of(body.student).values())
    assert all(p.grad is None for p in body.ckt.parameters())
    assert all(p.grad is None for _, t in teachers for p in t.parameters())


def test_mcr_every_k_steps_keeps_the_expected_weight(meta_dir):
    cfg, batches, teachers, body = student_setup(meta_dir)
    batch = batches.batch(0).to("cpu")
    every_step = KCTask(body, teachers, cfg.loss)(batch, step=5)["scr"]
    cfg.loss.mcr_every = 3
    task = KCTask(body, teachers, cfg.loss)
    torch.testing.assert_close(task(batch, step=6)["scr"], 3 * every_step)
    assert task(batch, step=7)["scr"].item() == 0.0
    cfg.loss.mcr_every = 2
    ke = KETask(body, teachers, cfg.loss)
    assert ke(batch, step=1)["hcr"].item() == 0.0 and ke(batch, step=2)["hcr"].item() > 0


def test_teacher_and_direct_tasks_give_every_parameter_a_gradient(meta_dir):
    cfg, batches, _, body = student_setup(meta_dir)
    teacher = tiny_net(8)
    TeacherTask(teacher, cfg.loss)(batches.batch(0).to("cpu"))["pixel"].backward()
    assert all(grads_of(teacher).values())
    terms = DirectTask(body, cfg.loss)(batches.batch(0).to("cpu"))
    assert set(terms) == {"pixel"}
    terms["pixel"].backward()
    assert all(grads_of(body.student).values())


def test_kc_rejects_a_batch_whose_weathers_do_not_match_the_teachers(meta_dir):
    cfg, batches, teachers, body = student_setup(meta_dir)
    task = KCTask(body, list(reversed(teachers)), cfg.loss)
    with pytest.raises(ValueError, match="do not match"):
        task(batches.batch(0).to("cpu"))


def _save_net(net: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path), metadata=metadata)


def _teacher_trainer(meta_dir: Path, run_dir: Path, steps: int, seed: int = 0) -> tuple[Trainer, nn.Module]:
    torch.manual_seed(seed)
    cfg = tiny_cfg()
    train = data.select(data.load_pairs(meta_dir, "train"), ["rain"], "train")
    valid = data.ValidSet.build(data.select(data.load_pairs(meta_dir, "valid"), ["rain"], "valid"), cfg.data,
                                clean=False)
    batches = data.WeatherBatches(train, cfg.data, seed, clean=0)
    net = tiny_net(8)
    stage = Stage("teacher", TeacherTask(net, cfg.loss), steps)
    trainer = Trainer(cfg, net, [stage], batches, valid, run_dir, _save_net, {"role": "teacher"},
                      torch.device("cpu"), val_every=2, warmup=1)
    return trainer, net


def test_resume_continues_from_the_saved_step(meta_dir, tmp_path):
    full, full_net = _teacher_trainer(meta_dir, tmp_path / "full", steps=6)
    full.fit()

    first, _ = _teacher_trainer(meta_dir, tmp_path / "cut", steps=6)
    calls = {"n": 0}
    task = first.stages[0].task
    original = task.forward

    def stop_after_three(batch, step=0):
        calls["n"] += 1
        if calls["n"] == 3:
            first.request_stop()  # what SIGINT does
        return original(batch, step=step)

    task.forward = stop_after_three
    result = first.fit()
    assert result.interrupted and result.step == 3
    assert json.loads((tmp_path / "cut" / "last.json").read_text())["step"] == 3

    second, net = _teacher_trainer(meta_dir, tmp_path / "cut", steps=6, seed=0)
    result = second.fit(resume=True)
    assert result.step == 6 and not result.interrupted
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 6
    for (k, a), b in zip(net.state_dict().items(), full_net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=f"{k} differs after resume")
    assert 1 <= len(result.best) <= 2
    assert all(Path(b["path"]).is_file() for b in result.best)
    # Resuming a different schedule is refused.
    other, _ = _teacher_trainer(meta_dir, tmp_path / "cut", steps=8)
    with pytest.raises(UnweatherError, match="cannot resume"):
        other.fit(resume=True)


def test_clean_floor_takes_damage_to_clean_frames_off_the_score():
    from unweather.training.trainer import validate

    gt = torch.full((1, 3, 32, 32), 0.5)
    valid = data.ValidSet({"rain": [(gt, gt + 0.1)], "clean": [(gt, gt)]})

    class Shift(torch.nn.Module):
        def forward(self, x):
            return x + 0.01  # 40 dB on every frame

    plain = validate(Shift(), valid, torch.device("cpu"))
    floored = validate(Shift(), valid, torch.device("cpu"), clean_floor=45.0)
    assert plain["clean"] == pytest.approx(40.0, abs=0.01)
    assert plain["score"] == pytest.approx(plain["rain"])
    assert floored["score"] == pytest.approx(plain["rain"] - 5.0, abs=0.01)
    assert validate(Shift(), valid, torch.device("cpu"), clean_floor=30.0)["score"] == pytest.approx(plain["rain"])
