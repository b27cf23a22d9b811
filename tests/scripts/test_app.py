"""app.py's wiring: inference_hf.py's flags and checks, the renderers offered, the classical renderer's per-request
options, offline failures as exit code 2 (the page itself: tests/webapp)."""

import numpy as np
import pytest
import torch

import app
import kernels
from data.inference_io import DEMO_FOCUS_PERCENTILES, DEMO_K
from webapp.core import RenderOptions

pytestmark = pytest.mark.xdist_group("gradio")  # imports gradio: one worker (tests/xdist_groups.py)


def test_defaults_are_the_offline_demo_with_the_classical_renderer():
    args, render_args, names = app.parse_args([])
    assert render_args.demo and render_args.renderer == "classical" and names == ["classical"]
    assert render_args.K == list(DEMO_K) and render_args.focus_percentile == list(DEMO_FOCUS_PERCENTILES)
    assert (args.host, args.port, args.output_dir, args.preview_side) == ("127.0.0.1", 7860, "outputs/app", 384)


def test_inference_flags_pass_through_and_are_validated(tmp_path, capsys):
    _, render_args, names = app.parse_args(["--K", "15", "--blades", "6", "--focus_xy", "3", "4", "--port", "8001"])
    assert render_args.K == [15.0] and render_args.blades == 6 and render_args.focus_xy == [3, 4]
    assert render_args.focus_percentile is None
    _, _, names = app.parse_args(["--pretrained_model_name_or_path", "base", "--adapter", "ad"])
    assert names == ["classical", "bokehdiff"]
    _, _, names = app.parse_args(["--renderer", "gaussian"])
    assert names == ["classical", "gaussian"]
    for argv, message in ((["--blades", "2"], "--blades must be 0"), (["--test_data_dir", "x"], "one photo"),
                          (["--preview_side", "8"], "--preview_side"), (["--image", "nope.png", "--disparity", "x"],
                                                                       "file not found")):
        with pytest.raises(SystemExit) as exit_info:
            app.parse_args(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_classical_factory_takes_the_options_of_each_request():
    _, render_args, names = app.parse_args([])
    factories = app.renderer_factories(render_args, names, torch.device("cpu"))
    image = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    disparity = torch.linspace(0, 1, 32).expand(1, 1, 24, 32).contiguous()
    options = RenderOptions(K=6, blades=5, rotation_deg=20, highlight_gain=2, highlight_threshold=0.5)
    got = factories["classical"](options, 1.0)(image, disparity, 6.0, 0.4)
    expected = kernels.render_classical(image, disparity, 6.0, 0.4, blades=5, rotation_deg=20.0,
                                        highlight_threshold=0.5, highlight_gain=2.0)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    disc = factories["classical"](RenderOptions(K=6), 1.0)(image, disparity, 6.0, 0.4)
    assert not torch.equal(disc, got)
    assert render_args.blades == 0  # the startup flags are not changed by a request


def test_unavailable_weights_exit_2_with_the_reason(tmp_path, capsys, monkeypatch):
    for name in ("GRADIO_TEMP_DIR", "GRADIO_ANALYTICS_ENABLED"):  # main() sets them; restored after the test
        monkeypatch.setenv(name, "")
    missing = tmp_path / "no_such_model"
    code = app.main(["--pretrained_model_name_or_path", str(missing), "--adapter", "none", "--output_dir",
                     str(tmp_path / "out"), "--device", "cpu"])
    assert code == 2 and str(missing) in capsys.readouterr().err
    code = app.main(["--depth_model", str(missing), "--output_dir", str(tmp_path / "out")])
    assert code == 2 and f"depth model: '{missing}' does not exist" in capsys.readouterr().err


@pytest.mark.usefixtures("one_thread")
def test_bokehdiff_is_offered_when_started_with_weights(tmp_path):
    """`--pretrained_model_name_or_path DIR --adapter none` (the tiny SDXL stack) adds BokehDiff to the page."""
    from models.tiny import save_tiny_sdxl
    from tests.webapp.conftest import layered_scene
    from webapp.ui import Callbacks

    base = save_tiny_sdxl(tmp_path / "base", seed=0)
    _, render_args, names = app.parse_args(["--pretrained_model_name_or_path", str(base), "--adapter", "none",
                                            "--device", "cpu"])
    with pytest.warns(UserWarning, match="no adapter given"):
        factories = app.renderer_factories(render_args, names, torch.device("cpu"))
    assert list(factories) == ["classical", "bokehdiff"]
    callbacks = Callbacks(factories, tmp_path / "out", initial_scene=layered_scene(32, 48), preview_side=48)
    session, *_ = callbacks.start("classical", 10.0, 0, 0.0, 0.0, 0.8)
    classical = callbacks.rerender(session, "classical", 10.0, 0, 0.0, 0.0, 0.8)[1]
    neural, again = (callbacks.rerender(session, "bokehdiff", 10.0, 0, 0.0, 0.0, 0.8) for _ in range(2))
    assert neural[-1] == "" and neural[1].shape == classical.shape == (32, 48, 3)
    assert not np.array_equal(neural[1], classical)
    np.testing.assert_array_equal(neural[1], again[1])  # bit-reproducible for the seed


def test_gradio_environment_sets_host_and_port_flags_override(monkeypatch, capsys):
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    args, _, _ = app.parse_args([])
    assert (args.host, args.port) == ("0.0.0.0", 7999)
    args, _, _ = app.parse_args(["--port", "8001", "--host", "127.0.0.1"])
    assert (args.host, args.port) == ("127.0.0.1", 8001)
    monkeypatch.setenv("GRADIO_SERVER_PORT", "http")
    with pytest.raises(SystemExit):
        app.parse_args([])
    assert "$GRADIO_SERVER_PORT must be a port number" in capsys.readouterr().err
    monkeypatch.delenv("GRADIO_SERVER_PORT")
    monkeypatch.delenv("GRADIO_SERVER_NAME")
    args, _, _ = app.parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 7860)
