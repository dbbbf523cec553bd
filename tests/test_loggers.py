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

    fake = types.SimpleNamespace(init=init)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    tracker = make_tracker(WandbLoggerConfig(mode="offline", tags=["a"]), tmp_path, {"seed": 0})
    tracker.log({"step": 5, "loss": 0.5})
    tracker.summary({"eval/x": 1.0})
    tracker.finish()
    assert calls["init"]["mode"] == "offline" and calls["init"]["dir"] == str(tmp_path)
    assert calls["log"] == [({"loss": 0.5}, 5)] and calls["finished"]
    assert isinstance(make_tracker(types.SimpleNamespace(name="console"), tmp_path, {}), NullTracker)
