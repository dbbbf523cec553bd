"""The optional wandb tracker mirrors run-directory records and fails clearly when absent."""

import sys
import types

import pytest

from rtkrun.config import WandbLoggerConfig
from rtkrun.errors import RtkrunError
from rtkrun.loggers import NullTracker, make_tracker


def test_wandb_missing_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(RtkrunError, match="pip install 'rtkrun\\[wandb\\]'"):
        make_tracker(WandbLoggerConfig(), tmp_path, {})


def test_wandb_tracker_mirrors_records(tmp_path, monkeypatch):
    calls = {}

    class FakeRun:
        summary = {}

        def log(self, data, step=None):
            calls.setdefault("log", []).append((data, step))

        def finish(self):
            calls["finished"] = True

    def init(**kwargs):
        calls["init"] = kwargs
        return FakeRun()

    fake = types.SimpleNamespace(
        init=init,
        util=types.SimpleNamespace(generate_id=lambda: "abc123"),
        Image=lambda path, caption="": ("image", path, caption),
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    tracker = make_tracker(WandbLoggerConfig(mode="offline", tags=["a"]), tmp_path, {"seed": 0})
    tracker.log({"step": 5, "loss": 0.5})
    tracker.summary({"eval/x": 1.0})
    tracker.finish()
    assert calls["init"]["mode"] == "offline" and calls["init"]["dir"] == str(tmp_path)
    assert calls["log"] == [({"loss": 0.5}, 5)] and calls["finished"]
    assert isinstance(make_tracker(types.SimpleNamespace(name="console"), tmp_path, {}), NullTracker)
    # The run id lives in the run directory: a resumed (or requeued) job continues the same run.
    assert calls["init"]["id"] == "abc123" and calls["init"]["resume"] == "allow"
    assert (tmp_path / "wandb_run_id.txt").read_text().strip() == "abc123"
    fake.util.generate_id = lambda: "other"
    make_tracker(WandbLoggerConfig(), tmp_path, {})
    assert calls["init"]["id"] == "abc123"
    tracker.image("samples/ddim50", tmp_path / "x.png", caption="W2 0.1")
    assert calls["log"][-1] == ({"samples/ddim50": ("image", str(tmp_path / "x.png"), "W2 0.1")}, None)
