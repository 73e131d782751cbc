"""Checkpoints: released-style .pth, plain state_dicts, our safetensors, refusal of unsafe pickles."""

from __future__ import annotations

import argparse
import collections

import pytest
import torch

from unweather.cli import main
from unweather.errors import UnweatherError
from unweather.models import PadCrop, build, load_checkpoint, read_metadata, save


@pytest.fixture(scope="module")
def msbdn_small() -> torch.nn.Module:
    # Two bottleneck blocks keep the test fast; the key layout is otherwise the release's.
    return build("msbdn", res_blocks=2).eval()


def _run(model: torch.nn.Module, seed: int = 1) -> torch.Tensor:
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)


def _release_style(model: torch.nn.Module) -> dict[str, object]:
    state = collections.OrderedDict((f"module.{k}", v.clone()) for k, v in model.state_dict().items())
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))])
    return {"epoch": 125, "state_dict": state, "optimizer": optimizer.state_dict()}


def test_release_checkpoint_loads_and_computes_the_same(msbdn_small, tmp_path):
    path = tmp_path / "release.pth"
    torch.save(_release_style(msbdn_small), path)
    loaded = load_checkpoint(path)
    assert loaded.arch == "msbdn" and loaded.arch_options == {"res_blocks": 2}
    assert not loaded.training
    torch.testing.assert_close(_run(loaded), _run(msbdn_small))


def test_plain_state_dict_with_compile_prefix_loads(msbdn_small, tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({f"_orig_mod.{k}": v for k, v in msbdn_small.state_dict().items()}, path)
    torch.testing.assert_close(_run(load_checkpoint(path)), _run(msbdn_small))


def test_full_release_key_list_is_recognised_as_msbdn_18(tmp_path):
    with torch.device("meta"):
        keys = build("msbdn").state_dict()
    # Zero-filled tensors of the release's shapes (only key recognition is tested here).
    state = {f"module.{k}": torch.zeros(v.shape) for k, v in keys.items()}
    path = tmp_path / "full.pth"
    torch.save({"epoch": 1, "state_dict": state}, path)
    model = load_checkpoint(path)
    assert model.arch_options == {"res_blocks": 18}
    assert sum(p.numel() for p in model.parameters()) == 28_712_861


def test_pickled_custom_object_is_refused_unless_trusted(msbdn_small, tmp_path):
    path = tmp_path / "with_args.pth"
    checkpoint = _release_style(msbdn_small)
    checkpoint["args"] = argparse.Namespace(lr=2e-4)
    torch.save(checkpoint, path)
    with pytest.raises(UnweatherError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "trusted=True" in message and "--trust-checkpoint" in message and "runs code" in message
    assert "argparse.Namespace" in message
    torch.testing.assert_close(_run(load_checkpoint(path, trusted=True)), _run(msbdn_small))


def test_missing_and_unexpected_keys_are_named(msbdn_small, tmp_path):
    state = dict(msbdn_small.state_dict())
    del state["conv_output.conv2d.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(UnweatherError, match="conv_output.conv2d.bias") as info:
        load_checkpoint(path, arch="msbdn", res_blocks=2)
    assert "extra.weight" in str(info.value)
    assert "missing" in str(info.value) and "unexpected" in str(info.value)


def test_shape_mismatch_is_named(tmp_path):
    model = build("student_small")
    state = dict(model.state_dict())
    state["head.bias"] = torch.zeros(5)
    path = tmp_path / "shape.pt"
    torch.save(state, path)
    with pytest.raises(UnweatherError, match=r"head.bias \(5,\) instead of \(12,\)"):
        load_checkpoint(path, arch="student_small")


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint\n", b"PK\x03\x04garbage" * 10])
def test_non_checkpoint_files_give_one_clear_error(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(UnweatherError, match="not a PyTorch checkpoint"):
        load_checkpoint(path)


def test_missing_file_and_unknown_arch(tmp_path):
    with pytest.raises(UnweatherError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth")
    path = tmp_path / "other.pt"
    torch.save({"layer.weight": torch.zeros(3)}, path)
    with pytest.raises(UnweatherError, match="arch="):
        load_checkpoint(path)
    with pytest.raises(UnweatherError, match="known models: identity"):
        load_checkpoint(path, arch="nonexistent")


@pytest.mark.parametrize("name", ["student_small", "student_base"])
def test_safetensors_round_trip_keeps_arch_options_and_outputs(tmp_path, name):
    model = build(name, bottleneck_depth=1).eval()
    path = tmp_path / "net.safetensors"
    save(PadCrop(model), path, metadata={"data": "synthetic", "run": "test"})
    meta = read_metadata(path)
    assert meta["arch"] == name and meta["data"] == "synthetic" and meta["format"] == "unweather"
    loaded = load_checkpoint(path)
    assert loaded.arch_options == {"bottleneck_depth": 1}
    torch.testing.assert_close(_run(loaded), _run(model))
    assert [p for p in tmp_path.iterdir()] == [path]  # no temporary file left behind


def test_half_precision_file_loads_as_float32(tmp_path):
    model = build("student_small").eval()
    path = tmp_path / "half.safetensors"
    save(model, path, dtype=torch.float16)
    loaded = load_checkpoint(path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    torch.testing.assert_close(_run(loaded), _run(model), atol=2e-3, rtol=1e-2)


def test_save_refuses_reserved_metadata_and_unregistered_networks(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save(build("student_small"), tmp_path / "a.safetensors", metadata={"arch": "x"})
    with pytest.raises(UnweatherError, match="registered architecture"):
        save(torch.nn.Conv2d(3, 3, 1), tmp_path / "b.safetensors")
    with pytest.raises(UnweatherError, match="not a safetensors"):
        (tmp_path / "c.txt").write_text("text")
        read_metadata(tmp_path / "c.txt")


def test_convert_command_round_trip(msbdn_small, tmp_path, capsys):
    source = tmp_path / "release.pth"
    checkpoint = _release_style(msbdn_small)
    checkpoint["args"] = argparse.Namespace(lr=2e-4)
    torch.save(checkpoint, source)
    out = tmp_path / "msbdn.safetensors"

    assert main(["convert", str(source), "-o", str(out)]) == 1
    assert "--trust-checkpoint" in capsys.readouterr().err
    assert not out.exists()

    assert main(["convert", str(source), "-o", str(out), "--trust-checkpoint", "--metadata", "data=x"]) == 0
    assert "msbdn" in capsys.readouterr().out
    meta = read_metadata(out)
    assert meta["arch"] == "msbdn" and meta["options"] == '{"res_blocks": 2}'
    assert meta["source"] == "release.pth" and meta["data"] == "x"
    torch.testing.assert_close(_run(load_checkpoint(out)), _run(msbdn_small))


def test_models_command_lists_every_network(capsys):
    assert main(["models", "--size", "64x64"]) == 0
    out = capsys.readouterr().out
    for name in ("identity", "msbdn", "student_small", "student_base"):
        assert name in out
    assert "28,712,861" in out and "64/128/256/256" in out
    assert main(["models", "--size", "sixty"]) == 1


def test_convert_with_arch_and_options_for_a_plain_state_dict(tmp_path, capsys):
    model = build("student_small", widths=[8, 16, 24, 32]).eval()
    source = tmp_path / "student.pt"
    torch.save(model.state_dict(), source)
    out = tmp_path / "student.safetensors"
    assert main(["convert", str(source), "-o", str(out)]) == 1
    assert "--arch" in capsys.readouterr().err
    args = ["convert", str(source), "-o", str(out), "--arch", "student_small"]
    assert main([*args, "--options", '{"widths": [8, 16, 24, 32]}', "--half"]) == 0
    loaded = load_checkpoint(out)
    assert loaded.tap_channels == (16, 24, 32, 32)
    torch.testing.assert_close(_run(loaded), _run(model), atol=2e-3, rtol=1e-2)
    assert main([*args, "--options", "[1]"]) == 1


def test_average_weights_writes_the_mean_network_and_refuses_different_ones(tmp_path):
    # scripts/average_weights.py made the shipped `quality`: the mean of three checkpoints of one network.
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "average_weights.py"
    nets = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        nets.append(build("student_small").eval())
        save(nets[-1], tmp_path / f"n{seed}.safetensors")
    out = tmp_path / "mean.safetensors"
    members = [str(tmp_path / f"n{seed}.safetensors") for seed in (1, 2, 3)]
    done = subprocess.run([sys.executable, str(script), str(out), *members], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    mean = load_checkpoint(out).state_dict()
    for key, value in mean.items():
        want = sum(n.state_dict()[key].float() for n in nets) / 3
        assert torch.allclose(value.float(), want, atol=1e-6), key
    torch.manual_seed(4)
    save(build("student_base").eval(), tmp_path / "other.safetensors")
    refused = subprocess.run([sys.executable, str(script), str(tmp_path / "x.safetensors"),
                              str(tmp_path / "n1.safetensors"), str(tmp_path / "other.safetensors")],
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "is not the same network" in refused.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_fit_haze_strength_fits_only_the_strength_and_raises_it_with_the_haze(tmp_path):
    # scripts/fit_haze_strength.py starts the dcp runs: the prior's strength fitted alone, every other weight kept.
    import json
    import subprocess
    import sys
    from pathlib import Path

    import cv2

    from unweather.demo import demo_photo

    script = Path(__file__).resolve().parents[1] / "scripts" / "fit_haze_strength.py"
    photo = cv2.imread(str(demo_photo()))
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, (y, x) in enumerate(((0, 0), (40, 120), (80, 60))):
        cv2.imwrite(str(photos / f"p{i}.png"), photo[y:y + 200, x:x + 300])
    torch.manual_seed(0)
    net = build("student_small", haze_head=True, upsample="bilinear", phase_balance=True, haze_gate=True).eval()
    save(net, tmp_path / "in.safetensors")
    out = tmp_path / "out.safetensors"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "in.safetensors"), str(out), "--images",
                           str(photos), "--side", "64", "--draws", "1", "--steps", "300", "--threads", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    fitted = load_checkpoint(out)
    assert fitted.config.haze_dcp and fitted.config.haze_max_gain == 10.0
    before, after = net.state_dict(), fitted.state_dict()
    assert {k for k in after if k not in before} == {"haze.prior.weight", "haze.prior.bias"}
    for key, value in after.items():
        if key in before:
            torch.testing.assert_close(value, before[key], msg=key)
    report = json.loads(read_metadata(out)["haze_strength_fit"])["kinds"]
    assert report["haze/heavy"]["strength_mean"] > report["clean"]["strength_mean"] + 0.2
    assert report["haze/heavy"]["psnr_fitted"] > report["haze/heavy"]["psnr_none"]
    plain = subprocess.run([sys.executable, str(script), str(tmp_path / "in.safetensors"), str(out), "--images",
                            str(tmp_path / "none")], capture_output=True, text=True)
    assert plain.returncode == 1 and "no photos" in plain.stderr
