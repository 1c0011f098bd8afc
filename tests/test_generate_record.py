"""What `generate --skip-existing` compares to keep an earlier output: the weights actually read
(a run folder given as --model included) and a guidance rule's own arguments."""

from pathlib import Path

import pytest
from conftest import registered
from pipeline_helpers import as_trained, micro_model

from controlfoley import GUIDANCE, cli
from controlfoley.data.synthetic import SyntheticWorld, write_clip_mp4
from controlfoley.generate_cli import read_manifest
from controlfoley.guidance import MultiCFG


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip_mp4(SyntheticWorld().clip(5, duration_s=2.0), tmp_path_factory.mktemp("media") / "tiny.mp4")


def test_a_run_folder_given_as_model_is_stamped_by_its_weights_file(video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The folder itself has no stamp: the record held null, and after the run's weights changed
    --skip-existing kept the old model's outputs."""
    run = tmp_path / "run"
    run.mkdir()
    as_trained(micro_model(seed=0)).save(run / "model.safetensors")
    argv = ["generate", str(video), "--model", str(run), "--out", str(tmp_path / "out"), "--steps", "1"]
    assert cli.main(argv) == 0
    settings = read_manifest(tmp_path / "out")["tiny"]["settings"]
    assert settings["model_file"] == str((run / "model.safetensors").resolve()) and settings["model_file_stamp"]["sha256"]
    assert cli.main([*argv, "--skip-existing"]) == 0  # the same weights: kept
    import os

    st = os.stat(run / "model.safetensors")
    os.utime(run / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cli.main([*argv, "--skip-existing"]) == 0  # touched (a copy, a checkout): the same content, still kept
    as_trained(micro_model(seed=1)).save(run / "model.safetensors")  # retrained
    capsys.readouterr()
    assert cli.main([*argv, "--skip-existing"]) == 2
    assert "it was made with other settings (model_file_stamp:" in capsys.readouterr().err


class Weighted(MultiCFG):
    """Multi-CFG with the video term weighted: a rule with an argument of its own."""

    def __init__(self, video_weight: float = 1.0, scale: float = 3.0, schedule: str = "linear") -> None:
        super().__init__(scale, schedule)
        self.video_weight = video_weight

    def combine(self, logits, scale):  # type: ignore[no-untyped-def]
        l_u, l_v, l_tv = logits
        return l_u + scale * ((l_tv - l_u) + self.video_weight * (l_v - l_u))


def test_a_guidance_rule_s_own_arguments_decide_whether_an_output_is_kept(video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.safetensors"
    as_trained(micro_model()).save(model)
    argv = ["generate", str(video), "--model", str(model), "--out", str(tmp_path / "out"), "--steps", "1", "--prompt", "knock"]
    with registered(GUIDANCE, "weighted_test", lambda **kw: Weighted(**kw)):
        assert cli.main([*argv, "--guidance", "weighted_test,video_weight=0.5"]) == 0
        assert "video_weight=0.5" in read_manifest(tmp_path / "out")["tiny"]["settings"]["guidance"]
        assert cli.main([*argv, "--guidance", "weighted_test,video_weight=0.5", "--skip-existing"]) == 0
        capsys.readouterr()
        assert cli.main([*argv, "--guidance", "weighted_test,video_weight=2.0", "--skip-existing"]) == 2
        assert "video_weight=0.5" in capsys.readouterr().err


def test_outputs_are_stamped_with_the_weights_that_made_them_not_a_file_replaced_since(
    video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run still training replaces its model file while generate runs: the record held the new
    file's stamp for outputs the old weights made."""
    import hashlib

    from controlfoley.pipeline import FoleyPipeline

    run = tmp_path / "run"
    run.mkdir()
    as_trained(micro_model(seed=0)).save(run / "model.safetensors")
    loaded_sha = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    real = FoleyPipeline._finish

    def finish_then_retrain(self, job, codes):  # type: ignore[no-untyped-def]
        out = real(self, job, codes)
        as_trained(micro_model(seed=1)).save(run / "model.safetensors")  # the run saves newer weights meanwhile
        return out

    monkeypatch.setattr(FoleyPipeline, "_finish", finish_then_retrain)
    assert cli.main(["generate", str(video), "--model", str(run), "--out", str(tmp_path / "out"), "--steps", "1"]) == 0
    stamp = read_manifest(tmp_path / "out")["tiny"]["settings"]["model_file_stamp"]
    assert stamp["sha256"] == loaded_sha != hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()


def test_a_record_without_the_model_s_hash_says_so_when_compared() -> None:
    """An older record whose model stamp holds no SHA-256 read as 'model_file_stamp: None then'."""
    from controlfoley.generate_cli import _as_compared

    assert _as_compared({"model_file_stamp": {"bytes": 10, "mtime": 1.0}})["model_file_stamp"] == "(no SHA-256 recorded)"
    assert _as_compared({"model_file_stamp": {"bytes": 10, "mtime": 1.0, "sha256": "ab"}})["model_file_stamp"] == "ab"
    assert _as_compared({"model_file_stamp": None})["model_file_stamp"] is None  # a preset without a file


def test_the_recorded_guidance_rule_holds_the_scale_it_sampled_with(video: Path, tmp_path: Path) -> None:
    """--cfg-scale replaces the rule's scale for sampling, but generate.json recorded the rule's
    repr with its own scale (CFG(scale=3.0, ...) beside cfg_scale 0.0 and 2.0)."""
    model = tmp_path / "m.safetensors"
    as_trained(micro_model()).save(model)
    for scale in ("0", "2"):
        out = tmp_path / f"out{scale}"
        argv = ["generate", str(video), "--model", str(model), "--out", str(out), "--steps", "1", "--guidance", "cfg_video", "--cfg-scale", scale]
        assert cli.main(argv) == 0
        settings = read_manifest(out)["tiny"]["settings"]
        assert settings["cfg_scale"] == float(scale) and f"scale={float(scale)}" in settings["guidance"], settings["guidance"]
