import subprocess
import sys

from unweather import __version__
from unweather.cli import main


def test_version_and_help():
    out = subprocess.run([sys.executable, "-m", "unweather.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"unweather {__version__}"
    out = subprocess.run([sys.executable, "-m", "unweather.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: unweather" in out.stdout


def test_redact_removes_url_credentials():
    from unweather.redact import redact

    assert redact("rtsp://admin:secret@cam/stream and http://u@h/x") == "rtsp://***@cam/stream and http://***@h/x"
    assert redact("/videos/a@b.mp4") == "/videos/a@b.mp4"


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out
