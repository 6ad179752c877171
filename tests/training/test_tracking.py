
from accelerate import Accelerator

from referencelcm.training.tracking import MetricsFileTracker, read_metrics, trackers


def test_metrics_file_tracker_records_every_logged_value(tmp_path):
    accelerator = Accelerator(log_with=trackers("none", tmp_path, "run"), project_dir=str(tmp_path))
    accelerator.init_trackers("run", config={"learning_rate": 1e-6})
    accelerator.log({"loss": 0.5, "consistency": 0.25, "note": "text is skipped"}, step=1)
    accelerator.log({"loss": float("nan")}, step=2)
    accelerator.end_training()
    records = read_metrics(tmp_path)
    assert records[0] == {"step": 1, "loss": 0.5, "consistency": 0.25}
    assert records[1] == {"step": 2, "loss": "nan"}
    assert (tmp_path / "config.json").is_file()


def test_report_to_is_split_and_none_disables_external_trackers(tmp_path):
    assert [type(t) for t in trackers("none", tmp_path, "r")] == [MetricsFileTracker]
    selected = trackers("tensorboard,wandb", tmp_path, "r")
    assert selected[:2] == ["tensorboard", "wandb"] and isinstance(selected[2], MetricsFileTracker)
