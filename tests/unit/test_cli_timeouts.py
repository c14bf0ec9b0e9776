"""The options `--keepalive`, `--user-timeout` and `--congestion` reach TcpConfig."""

import pytest

from usertcp.cli import _config, build_parser


@pytest.mark.parametrize("command", [["echo"], ["discard"], ["http"],
                                     ["connect", "10.7.0.1", "80"]])
def test_keepalive_and_user_timeout_options(command):
    args = build_parser().parse_args([*command, "--keepalive", "60,10,5", "--user-timeout", "30"])
    cfg = _config(args)
    assert (cfg.keepalive, cfg.keepalive_idle, cfg.keepalive_interval, cfg.keepalive_probes) == (
        True, 60.0, 10.0, 5)
    assert cfg.user_timeout == 30.0


def test_defaults_leave_them_off():
    cfg = _config(build_parser().parse_args(["echo"]))
    assert cfg.keepalive is False and cfg.user_timeout is None


@pytest.mark.parametrize("argv", [
    ["--keepalive", "60,10"], ["--keepalive", "a,b,c"], ["--keepalive", "0,10,5"],
    ["--keepalive", "60,10,0"], ["--user-timeout", "0"], ["--user-timeout", "soon"]])
def test_bad_values_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["echo", *argv])
    assert exc.value.code == 2
    assert "usage" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["cubic", "newreno"])
def test_congestion_option(name):
    assert _config(build_parser().parse_args(["echo", "--congestion", name])).congestion == name


def test_congestion_default_is_cubic_and_others_are_usage_errors(capsys):
    assert _config(build_parser().parse_args(["echo"])).congestion == "cubic"
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["echo", "--congestion", "bbr"])
    assert exc.value.code == 2
    assert "invalid choice: 'bbr'" in capsys.readouterr().err
