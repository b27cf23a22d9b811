"""Every command the README or a script's --help/docstring shows runs as written (issue 12, item 14).

The commands are extracted from the documents (tests/scripts/documented_commands.py) and each must be listed
below, so a new or changed command fails here until it is checked:

- ``RUN``: run as written, in-process, in a scratch copy of the repository (outputs land there; ``photo.jpg``
  and ``photo_disp.npy`` are made for the one-image example). These are the offline, toy-scale commands.
- ``PARSE``: commands that need hub weights, a GPU, the placeholder folders of the text (``DIR``, ``photos``),
  or minutes of CPU: their arguments go through the script's own parser and validation, so a renamed or
  removed flag, or a combination the script refuses, fails here. The reason is given for each.
- ``MAKE``: the make target exists (``make -n``); its recipe's command is checked through ``PARSE``/``RUN``.
- ``FILES``: install lines; the files they name exist.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.scripts.documented_commands import DOCS, REPO, all_commands

RUN = [
    "python inference_hf.py --renderer classical --demo --output_dir outputs/demo",  # make demo: seconds
    "python dataset.py preview --data_root test_data/otf --out outputs/preview --n 6 --size 128",
    "python dataset.py inspect --data_root test_data/ebb",
    "python -m scripts.make_sample_data --out prepared --otf_size 512",
    "python inference_hf.py --renderer classical --image photo.jpg --disparity photo_disp.npy --focus_xy 320 240 "
    "--K 12 20 --output_dir outputs/one",
    # The tiny smoke run, in its README order (each command uses the previous one's outputs).
    "python -c \"from models.tiny import save_tiny_sdxl; save_tiny_sdxl('outputs/tiny_sdxl')\"",
    "python train_lora_otf.py --config configs/train_tiny.yaml --pretrained_model_name_or_path outputs/tiny_sdxl "
    "--train_data_dir test_data/otf --output_dir outputs/tiny_run",
    "python -m scripts.plot_run outputs/tiny_run",
    "python inference_hf.py --pretrained_model_name_or_path outputs/tiny_sdxl --adapter outputs/tiny_run "
    "--test_data_dir test_data/ebb --output_dir outputs/tiny_render",
]

_HUB = "hub weights (SDXL base, adapter, Depth Anything or BiRefNet), not available offline"
PARSE = {
    "python prepare_data.py --input_dir my_photos/ --output_dir prepared/mine": _HUB,
    "python prepare_data.py --input_dir photos --output_dir prepared --batch_size 4 --fp16": _HUB + "; CUDA",
    "python prepare_data.py --input_dir photos --output_dir prepared --depth_model "
    "/models/Depth-Anything-V2-Large-hf --mask_model /models/BiRefNet": "local copies of the hub weights",
    "python inference_hf.py --test_data_dir prepared/mine --output_dir outputs/mine --K 20 "
    "--pretrained_model_name_or_path SG161222/RealVisXL_V5.0 --adapter zcx65535/bokehdiff": _HUB,
    "python app.py": "serves until stopped; tests/webapp/test_browser.py starts it on a free port and drives it",
    "python app.py --pretrained_model_name_or_path DIR --adapter DIR":
        "placeholder folders; tests/scripts/test_app.py starts it with the tiny SDXL stack",
    "python inference_hf.py --test_data_dir test_data/ebb_published --output_dir outputs/published --protocol published "
    "--focus_protocol published --K 20": _HUB + " (the published path on the tiny stack: tests/models/test_protocol.py)",
    "python inference_hf.py --test_data_dir DIR --output_dir OUT --data_id RUN --K 20 "
    "--enable_xformers_memory_efficient_attention": "placeholder folders; " + _HUB,
    "accelerate launch train_lora_otf.py --train_data_dir prepared/otf --output_dir runs/bokehdiff "
    "--pretrained_model_name_or_path SG161222/RealVisXL_V5.0 --mixed_precision bf16 --resolution 512 --edge --lpips "
    "--gan_loss_type multilevel_sigmoid_s --cv_type convnext": _HUB + "; a GPU",
    "accelerate launch train_lora_otf.py --train_data_dir prepared/otf --output_dir runs/bokehdiff "
    "--pretrained_model_name_or_path SG161222/RealVisXL_V5.0 --mixed_precision bf16 [--config PRESET.yaml]":
        _HUB + "; a GPU",
    "python evaluate.py --pred_dir outputs/mine --gt_dir prepared/gt --disparity_dir prepared/mine/depth "
    "--output_dir outputs/eval": "the user's renders and ground truth",
    "python evaluate.py --pred_dir outputs/benchmark/classical --dataset benchmark_data/ebb --output_dir outputs/eval":
        "the benchmark (minutes to build); the same path: tests/scripts/test_run_benchmark.py",
    "python -m scripts.make_sample_data --out test_data --n_scenes 3 --height 160 --width 223 --max_coc_px 8 "
    "--otf_size 160 --disparity_dtype float16": "rewrites the committed test_data/ (the README's run covers the code)",
    "python -m scripts.make_benchmark --out benchmark_data": "minutes of CPU (48 ray-traced ground truths)",
    "python -m scripts.run_benchmark --data benchmark_data --out outputs/benchmark":
        "minutes of CPU; tests/scripts/test_run_benchmark.py runs it on a small benchmark",
    "python -m scripts.run_benchmark --data benchmark_data --out outputs/benchmark --write_benchmarks":
        "minutes of CPU; tests/scripts/test_run_benchmark.py runs it on a small benchmark",
    "python -m scripts.run_benchmark --bokehdiff_args \"--pretrained_model_name_or_path DIR --adapter DIR\"": _HUB,
    "python -m scripts.plot_run RUN_DIR [--out PNG]": "a placeholder folder; the smoke run's `python -m "
        "scripts.plot_run outputs/tiny_run` runs (RUN), tests/scripts/test_plot_run.py covers --out and the errors",
    "python -m scripts.reproduce --benchmark blb --data DIR --out outputs/reproduce":
        "placeholder folder (BLB is downloaded by the user); tests/scripts/test_reproduce.py runs it on a tiny BLB",
    "python -m scripts.reproduce --benchmark all --data blb=DIR ebb=DIR layered=benchmark_data --out outputs/reproduce":
        "placeholder folders; tests/scripts/test_reproduce.py runs all three on tiny sets",
    "python -m scripts.reproduce --benchmark layered --data benchmark_data --methods identity gaussian classical "
    "--out outputs/reproduce": "minutes of CPU (builds the benchmark); tests/scripts/test_reproduce.py runs a tiny one",
    "python -m scripts.reproduce --benchmark layered --data layered=outputs/layered --methods identity gaussian "
    "classical --learned --out outputs/reproduce": "7 min of CPU (wrote docs/reproduce_layered_chart.png); "
        "tests/scripts/test_reproduce.py runs a tiny one",
    "python -m scripts.compare_recipes --out outputs/recipes --markdown outputs/recipes/table.md":
        "minutes of CPU (one tiny training run per variant); tests/scripts/test_compare_recipes.py runs one variant",
    "accelerate launch train_lora_otf.py --config configs/train_published.yaml --train_data_dir prepared/otf "
    "--output_dir runs/published": _HUB + "; a GPU",
    "accelerate launch --num_processes 8 inference_hf.py --test_data_dir prepared/mine --output_dir outputs/mine "
    "--K 10 20": _HUB + "; 8 GPUs (tests/scripts/test_inference_sharded.py runs 2 CPU processes)",
}

MAKE = ["make demo", "make test", "make app", "make evaluate", "make evaluate-record", "make bench",
        "make reproduce BLB_DATA=DIR EBB_DATA=DIR"]

FILES = {
    "python3.11 -m venv .venv && .venv/bin/pip install -r requirements.txt -r requirements-gpu.txt":
        ["requirements.txt", "requirements-gpu.txt"],
    "pip install -r requirements-gpu.txt && pytest -m gpu": ["requirements-gpu.txt", "pytest.ini"],
}


def test_every_documented_command_is_checked():
    documented = set(all_commands())
    listed = set(RUN) | set(PARSE) | set(MAKE) | set(FILES)
    assert documented - listed == set(), "documented commands that no test checks (add them to this file)"
    assert listed - documented == set(), "checked commands no document shows any more (remove them here)"


def _parsers():
    import app
    import evaluate
    import inference_hf
    import prepare_data
    from scripts import compare_recipes, make_benchmark, make_sample_data, plot_run, reproduce, run_benchmark
    from training.config import parse_args as train_args

    return {"app.py": app.parse_args, "inference_hf.py": inference_hf.parse_args, "prepare_data.py": prepare_data.parse_args,
            "evaluate.py": evaluate.parse_args, "train_lora_otf.py": train_args,
            "scripts.make_sample_data": make_sample_data.parse_args,
            "scripts.make_benchmark": make_benchmark.parse_args, "scripts.run_benchmark": run_benchmark.parse_args,
            "scripts.compare_recipes": compare_recipes.parse_args, "scripts.plot_run": plot_run.parse_args,
            "scripts.reproduce": reproduce.parse_args}


def _split(command: str) -> tuple[str, list[str]]:
    """``(script, argv)``: ``python x.py A``, ``python -m pkg.mod A`` and ``accelerate launch x.py A``."""
    words = shlex.split(command)
    if words[:2] == ["accelerate", "launch"]:
        words = words[2:]
        while words and not words[0].endswith(".py"):  # the launcher's own options (--num_processes 8)
            words = words[1:]
        words = ["python", *words]
    assert words[0] == "python", command
    if words[1] == "-m":
        return words[2], words[3:]
    return words[1], words[2:]


@pytest.mark.parametrize("command", sorted(PARSE))
def test_commands_that_need_weights_or_minutes_parse_and_validate(command):
    script, argv = _split(command)
    argv = [word for word in argv if not (word.startswith("[") or word.endswith("]"))]  # [optional] parts
    args = _parsers()[script](argv)
    assert args is not None


@pytest.mark.parametrize("command", MAKE)
def test_make_targets_exist(command):
    result = subprocess.run(["make", "-n", *command.split()[1:]], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", sorted(FILES))
def test_install_lines_name_existing_files(command):
    for name in FILES[command]:
        assert (REPO / name).is_file(), f"{command}: {name} is missing"
    assert "gpu:" in (REPO / "pytest.ini").read_text()  # `pytest -m gpu` selects a registered marker


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch copy of the repository: code linked, test_data copied, a photo for the one-image example."""
    root = tmp_path_factory.mktemp("documented")
    for entry in REPO.iterdir():
        if entry.name in ("outputs", "prepared", "runs", ".git", "test_data") or entry.name.startswith("."):
            continue
        (root / entry.name).symlink_to(entry)
    shutil.copytree(REPO / "test_data", root / "test_data")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (250, 330, 3), dtype=np.uint8)).save(root / "photo.jpg")
    np.save(root / "photo_disp.npy", np.tile(np.linspace(0, 1, 330, dtype=np.float32), (250, 1)))
    return root


def _run_in_process(command: str) -> int:
    import dataset
    import inference_hf
    import train_lora_otf
    from scripts import make_sample_data, plot_run

    words = shlex.split(command)
    if words[:2] == ["python", "-c"]:
        exec(compile(words[2], "<README>", "exec"), {})  # noqa: S102 - the README's own one-liner
        return 0
    script, argv = _split(command)
    main = {"dataset.py": dataset.main, "inference_hf.py": inference_hf.main, "train_lora_otf.py": train_lora_otf.main,
            "scripts.make_sample_data": make_sample_data.main, "scripts.plot_run": plot_run.main}[script]
    try:
        return main(argv) or 0
    except SystemExit as exit_:  # --help
        return exit_.code or 0


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_offline_commands_run_as_written(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    for command in RUN:
        assert _run_in_process(command) == 0, command
    capsys.readouterr()
    assert (workdir / "outputs" / "preview" / "preview.png").is_file()
    assert (workdir / "prepared" / "otf" / "fg").is_dir() and (workdir / "prepared" / "ebb" / "meta.json").is_file()
    assert len(list((workdir / "outputs" / "one").glob("photo_K*_f*.png"))) == 2
    assert (workdir / "outputs" / "tiny_run" / "pytorch_lora_weights.safetensors").is_file()
    with Image.open(workdir / "outputs" / "tiny_run" / "training_curves.png") as curves:  # redrawn by plot_run
        assert curves.format == "PNG" and curves.size == (1600, 750)
    assert len(list((workdir / "outputs" / "tiny_render").glob("scene0*_K*.png"))) == 3
    # make demo's outputs as the README lists them: six motorcycle_K<K>_f<focus>.png, the sheet, the config.
    demo = sorted(p.name for p in (workdir / "outputs" / "demo").iterdir())
    assert demo == sorted([f"motorcycle_K{k}_f{f}.png" for k in (10, 20) for f in ("0.88", "0.56", "0.09")]
                          + ["contact_sheet.png", "run_config.json"])


def test_the_documented_sample_data_fits_the_documented_training_commands(tmp_path):
    """The README's training command trains 512-px crops on `prepared/otf`, which the documented
    `make_sample_data --out prepared` wrote at its default 256 px: every background was smaller than the crop and
    the run was refused. Each training command on `prepared/otf` must fit the data the docs make there."""
    from data.synthesis import OnTheFlyDataset
    from scripts import make_sample_data
    from training.config import parse_args as train_args

    commands = list(all_commands())
    makers = [c for c in commands if c.startswith("python -m scripts.make_sample_data --out prepared")]
    trainers = [c for c in commands if "train_lora_otf.py" in c and "--train_data_dir prepared/otf" in c
                and "[" not in c]  # the usage line with an optional [--config] placeholder states no resolution
    assert makers and trainers
    for maker in makers:
        argv = _split(maker)[1]
        argv[argv.index("--out") + 1] = str(tmp_path / "prepared")
        assert make_sample_data.main(argv + ["--n_scenes", "1"]) in (0, None), maker
        for trainer in trainers:
            resolution = train_args(_split(trainer)[1]).resolution
            OnTheFlyDataset(tmp_path / "prepared" / "otf", resolution).check_usable()  # raises naming the sizes


def test_hints_spell_scripts_as_modules_and_a_file_path_run_says_how():
    """Scripts under scripts/ import the repository's packages, so they run as ``python -m scripts.NAME`` from
    the root; every hint says so, and a run by file path exits with that spelling instead of a traceback."""
    texts = [p for p in REPO.rglob("*") if p.suffix in (".py", ".md", ".yaml") and ".venv" not in p.parts
             and "tests" not in p.parts]
    offenders = [str(p.relative_to(REPO)) for p in texts if "python scripts/" in p.read_text(errors="replace")]
    assert offenders == []
    scripts = sorted(p.stem for p in (REPO / "scripts").glob("*.py") if p.stem != "__init__")
    assert "compare_recipes" in scripts and "make_sample_data" in scripts
    for name in scripts:  # the guard runs before any import, so each run takes well under a second
        result = subprocess.run([sys.executable, f"scripts/{name}.py", "--out", "x"], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and "Traceback" not in result.stderr, (name, result.stderr[-2000:])
        assert result.stderr.strip() == f"run it as a module from the repository root: python -m scripts.{name} [options]"


_PACKAGES = ("data", "models", "kernels", "losses", "metrics", "training", "configs", "scripts", "benchmarks", "tests")
_PATH_FLAGS = ("--input_dir", "--output_dir", "--test_data_dir", "--train_data_dir", "--gt_dir", "--disparity_dir",
               "--pred_dir", "--out", "--data_root")


def test_user_data_in_the_docs_stays_out_of_packages_and_out_of_git():
    """Folders the README and docs/ tell users to fill are outside the code packages and ignored by git."""
    ignored = [line.strip().strip("/") for line in (REPO / ".gitignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for command, where in all_commands().items():
        if not {"README.md", *DOCS} & set(where):
            continue
        words = shlex.split(command)
        for flag, value in zip(words, words[1:]):
            if flag not in _PATH_FLAGS or value.isupper() or value.startswith(("test_data", "/")):
                continue  # placeholders (DIR), the committed test data, absolute paths
            top = Path(value).parts[0]
            assert top not in _PACKAGES, f"{command}: {flag} {value} is inside the '{top}' package"
            assert top in ignored, f"{command}: {flag} {value}: '{top}/' is not in .gitignore"


def _repository_texts():
    skip = {".venv", ".git", "outputs", "prepared", "runs", "benchmark_data", "__pycache__"}
    for path in REPO.rglob("*"):
        if path.is_file() and not skip & set(path.relative_to(REPO).parts) and path.suffix in (
                ".py", ".md", ".txt", ".yaml", ".yml", ".ini", ".sh", ".cfg", ".toml", "") and path.stat().st_size < 1e6:
            yield path


def test_the_repository_stands_alone():
    """No file points outside the repository (a clone has no ../shared, DESIGN.md or STYLE.md); the
    conventions live in docs/conventions.md, and every relative link of the markdown files resolves."""
    this_file = Path(__file__).resolve()
    outside = []
    for path in _repository_texts():
        if path.resolve() == this_file:
            continue
        text = path.read_text(errors="replace")
        outside += [f"{path.relative_to(REPO)}: {word}" for word in ("../shared", "DESIGN.md", "STYLE.md")
                    if word in text]
    assert outside == []
    conventions = (REPO / "docs" / "conventions.md").read_text()
    for section in ("## Units and tensor layouts", "## PISA", "## The one-step model", "## Public contracts",
                    "## Style"):
        assert section in conventions
    for markdown in [*REPO.glob("*.md"), *REPO.glob("docs/*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)\)", markdown.read_text()):
            assert (markdown.parent / target).exists(), f"{markdown.name} links to missing {target}"


def test_readme_layout_lists_every_top_level_folder_and_script():
    """The README's Layout table names each top-level folder and script of the repository (hidden and
    git-ignored ones aside): a merged branch that adds one must add its row."""
    ignored = {line.strip().strip("/") for line in (REPO / ".gitignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    entries = [entry for entry in REPO.iterdir() if not entry.name.startswith((".", "_"))
               and entry.name not in ignored]
    wanted = {f"{entry.name}/" for entry in entries if entry.is_dir()} | {
        entry.name for entry in entries if entry.suffix == ".py"}
    layout = (REPO / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `([^`]+)` \|", layout, flags=re.M))
    assert wanted - rows == set(), "top-level folders / scripts missing from the README's Layout table"
    assert rows - wanted == set(), "Layout rows naming no tracked top-level folder or script"
