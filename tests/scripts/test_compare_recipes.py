"""scripts/compare_recipes.py (the docs/training_recipe.md measurements): runs a variant and writes its row."""

import re

import pytest

from scripts import compare_recipes

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_one_step_of_the_scaled_down_preset_writes_its_row(tmp_path, capsys):
    table = tmp_path / "table.md"
    assert compare_recipes.main(["--out", str(tmp_path / "runs"), "--steps", "1", "--variants",
                                 "released preset (scaled down)", "--markdown", str(table)]) == 0
    rows = table.read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("| variant |")
    assert re.fullmatch(r"\| released preset \(scaled down\) \| 0\.\d{4} \| 0\.\d{4} \| [+-]\d+\.\d% \|", rows[2])
    assert rows[2] in capsys.readouterr().out
    # The run used the preset: both gammas and the PISA discretisation recorded in its adapter.
    from models.lora import read_lora_file

    _, info = read_lora_file(tmp_path / "runs" / "released_preset_scaled_down")
    assert (info["model_gamma"], info["synthesis_gamma"], info["pisa"]["compat"]) == (1.0, 2.2, True)


def test_bad_arguments_exit_2():
    with pytest.raises(SystemExit) as error:
        compare_recipes.parse_args(["--out", "x", "--steps", "0"])
    assert error.value.code == 2
    with pytest.raises(SystemExit):
        compare_recipes.parse_args(["--out", "x", "--variants", "no such variant"])
