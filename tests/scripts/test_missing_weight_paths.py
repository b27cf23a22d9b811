"""A mistyped local weights folder is said to be a missing path, naming the flag, in every script: it used to be
looked up as a hub id ("not in the local Hugging Face cache ... `hf download /tmp/nope`"). In-process, offline."""

from pathlib import Path

import pytest

import inference_hf
import prepare_data
import train_lora_otf
from models.hub import LocalPathMissingError, check_source, looks_like_path

REPO = Path(__file__).resolve().parents[2]
EBB = REPO / "test_data" / "ebb"


def test_what_can_only_be_a_path(tmp_path):
    for path in ("/tmp/nope", "./nope", "../models/x", "~/models/x", "a/b/c", "C:\\models\\x"):
        assert looks_like_path(path), path
    for hub_id in ("SG161222/RealVisXL_V5.0", "zcx65535/bokehdiff", "gpt2"):
        assert not looks_like_path(hub_id), hub_id
    check_source(tmp_path, "base model")  # exists: fine
    check_source("owner/name", "base model")  # a hub id: for the hub to answer
    with pytest.raises(LocalPathMissingError, match="'/no/such/dir' does not exist. It is a path, not a Hugging"):
        check_source("/no/such/dir", "base model")


def _one_error(capsys, flag, path):
    err = capsys.readouterr().err
    assert f"{flag}" in err and f"'{path}' does not exist" in err, err
    assert "hf download" not in err and "cache" not in err, err


def test_inference_names_the_missing_base_and_adapter_folders(tmp_path, capsys):
    pair = ["--image", str(EBB / "input" / "scene00.png"), "--disparity", str(EBB / "depth" / "scene00_pred.npy"),
            "--output_dir", str(tmp_path / "out"), "--device", "cpu"]
    missing = tmp_path / "no_such_sdxl"
    assert inference_hf.main([*pair, "--pretrained_model_name_or_path", str(missing), "--adapter", "none"]) == 2
    _one_error(capsys, "--pretrained_model_name_or_path", missing)
    assert inference_hf.main([*pair, "--pretrained_model_name_or_path", str(missing), "--adapter",
                              str(tmp_path / "no_adapter")]) == 2
    _one_error(capsys, "--adapter", tmp_path / "no_adapter")


def test_training_and_prepare_data_name_the_missing_folder(tmp_path, capsys):
    missing = tmp_path / "no_such_sdxl"
    assert train_lora_otf.main(["--config", str(REPO / "configs" / "train_tiny.yaml"), "--pretrained_model_name_or_path",
                                str(missing), "--train_data_dir", str(REPO / "test_data" / "otf"),
                                "--output_dir", str(tmp_path / "run")]) == 2
    _one_error(capsys, "--pretrained_model_name_or_path", missing)
    code = prepare_data.main(["--input_dir", str(EBB / "input"), "--output_dir", str(tmp_path / "prep"),
                              "--depth_model", str(tmp_path / "no_depth"), "--no_mask", "--device", "cpu"])
    assert code == 2
    _one_error(capsys, "--depth_model", tmp_path / "no_depth")
