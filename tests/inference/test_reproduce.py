"""Rendering and scoring benchmark cases: a known perturbation gives its PSNR, renders are reused only when
their recorded settings match, and a failing method or peer fails only its own cases."""

import math
import sys

import numpy as np
import pytest
import torch

from inference.benchmark_cases import Case
from inference.reproduce import Method, RenderManifest, peer_argv, run_cases

OFFSET = 0.01


def _cases(n=2, size=(20, 24)):
    rng = np.random.default_rng(0)
    cases = []
    for index in range(n):
        gt = torch.from_numpy(rng.uniform(0.1, 0.85, (3, *size)).astype(np.float32))
        disparity = torch.zeros(1, *size)
        disparity[:, :, size[1] // 2:] = 1.0
        data = {"image": gt.clone(), "disparity": disparity, "gt": gt, "K": 3.0, "disp_focus": 0.5}
        cases.append(Case("toy", f"scene{index}", f"gt{index}", level=1 + index % 2, load=lambda d=data: dict(d),
                          source={"gt": f"gt{index}"}))
    return cases


def _method(name, offset, calls):
    def render(image, disparity, K, disp_focus):
        calls.append(name)
        return image + offset  # the toy cases' input is their GT

    return Method(name, spec=name, build=lambda: (render, torch.device("cpu")))


def test_known_offset_scores_its_psnr_and_renders_are_reused(tmp_path):
    calls, cases = [], _cases()
    methods = [_method("exact", 0.0, calls), _method("offset", OFFSET, calls)]
    result = run_cases(cases, methods, tmp_path, log=lambda line: None)
    assert result.failures == [] and len(result.rows) == 4 and calls == ["exact", "offset"] * 2
    psnr = {(r["method"], r["name"]): r["psnr"] for r in result.rows}
    for case in cases:
        assert psnr[("exact", case.name)] >= 90  # 16-bit PNG of the exact GT
        assert psnr[("offset", case.name)] == pytest.approx(20 * math.log10(1 / OFFSET), abs=0.1)
        assert not math.isnan(next(r for r in result.rows if r["name"] == case.name)["psnr_band"])
    assert result.rows[0]["level"] == 1 and result.rows[-1]["level"] == 2

    again = run_cases(cases, methods, tmp_path, log=lambda line: None)
    assert again.reused == {"exact": 2, "offset": 2} and again.rendered == {"exact": 0, "offset": 0}
    assert [r["psnr"] for r in again.rows] == [r["psnr"] for r in result.rows]
    (tmp_path / "offset" / "gt1.png").unlink()  # a lost file is rendered again
    changed = [_method("exact", 0.0, calls), Method("offset", "offset v2", methods[1].build)]  # a new spec
    third = run_cases(cases, changed, tmp_path, log=lambda line: None)
    assert third.rendered == {"exact": 0, "offset": 2} and third.reused == {"exact": 2, "offset": 0}
    assert RenderManifest(tmp_path / "offset").records["gt0"]["spec"] == "offset v2"


def test_unavailable_method_and_failing_cases_leave_the_rest_scored(tmp_path):
    def missing():
        raise OSError("weights 'nowhere' not found. Pass --bokehdiff_args")

    def bad_size(image, disparity, K, disp_focus):
        return image[..., :-1]

    broken = _cases(3)
    broken[1] = Case("toy", "scene1", "gt1", 1, load=lambda: (_ for _ in ()).throw(ValueError("unreadable EXR 'x'")))
    methods = [Method("gone", "gone", build=missing), _method("exact", 0.0, []),
               Method("short", "short", build=lambda: (bad_size, torch.device("cpu")))]
    result = run_cases(broken, methods, tmp_path, log=lambda line: None)
    assert result.unavailable == {"gone": "weights 'nowhere' not found"}
    assert sorted(r["name"] for r in result.rows) == ["gt0", "gt2"]
    reasons = {(f["method"], f["name"]): f["reason"] for f in result.failures}
    assert "unreadable EXR 'x'" in reasons[(None, "gt1")]
    assert "render at the input's size" in reasons[("short", "gt0")]


def test_peer_commands_run_without_a_shell_and_fail_alone(tmp_path):
    argv = peer_argv("tool --in={image} '{out}' {K}", image="/a b/x.png", out="/o p.png", K="2.5")
    assert argv == ["tool", "--in=/a b/x.png", "/o p.png", "2.5"]
    writer = (f"{sys.executable} -c \"import sys, shutil; k = float(sys.argv[3]); "
              "sys.exit(4) if k > 4 else shutil.copy(sys.argv[1], sys.argv[2])\" {image} {out} {K}")
    cases = _cases(2)
    slow = Case("toy", "scene9", "gt9", 1, load=lambda: {**cases[0].load(), "K": 5.0}, source={})
    silent = Method("silent", "silent", command=f"{sys.executable} -c pass {{out}}")
    result = run_cases([*cases, slow], [Method("copy", writer, command=writer), silent], tmp_path,
                       log=lambda line: None)
    scored = sorted(r["name"] for r in result.rows)
    assert scored == ["gt0", "gt1"]  # the peer's 8-bit copy of the GT input
    assert all(r["psnr"] > 45 for r in result.rows)
    reasons = {(f["method"], f["name"]): f["reason"] for f in result.failures}
    assert "exited with status 4 on 'gt9'" in reasons[("copy", "gt9")]
    assert all("wrote no" in reasons[("silent", name)] for name in ("gt0", "gt1", "gt9"))
    assert (tmp_path / "inputs" / "scene0.png").is_file() and (tmp_path / "inputs" / "scene0_disparity.npy").is_file()
