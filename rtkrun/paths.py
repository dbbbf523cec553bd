"""Where rtkrun's own files live: the Hydra config tree beside the package (the checkout's
``conf/``; an editable install reads it in place)."""

from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
