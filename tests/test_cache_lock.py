"""Two processes asking for the same cache entry: one prepares it, the other waits and uses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from vlx.model import smol
from vlx.model.tower import TowerConfig
from vlx.run import entry_lock

MICRO = dict(image_size=64, patch_size=4, hidden_size=32, num_layers=2, num_heads=2, steps=2, batch_size=4,
             n_eval=4, precision="fp32")


def test_a_second_process_waits_for_the_entry_instead_of_building_it(tmp_path, monkeypatch):
    monkeypatch.setenv("VLX_CACHE_DIR", str(tmp_path))
    target = tmp_path / f"smol-tower-{TowerConfig(**MICRO).digest()}"
    code = (f"import logging; logging.basicConfig(level=logging.INFO)\n"
            f"from vlx.model import smol\nprint(smol.vision_dir(retrain=True, **{MICRO!r}))")
    log = tmp_path / "other.log"
    with entry_lock(target), open(log, "w") as err:
        other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=err, text=True,
                                 env={**os.environ, "VLX_CACHE_DIR": str(tmp_path)})
        deadline = time.time() + 120
        while "waiting for another process preparing the smol tower" not in log.read_text():
            assert other.poll() is None and time.time() < deadline, log.read_text()  # it must wait, not build
            time.sleep(0.2)
        built = smol._pretrain_tower(TowerConfig(**MICRO), tmp_path, target)  # this process prepares it
        assert built == target
    stdout, _ = other.communicate(timeout=120)
    stderr = log.read_text()
    assert other.returncode == 0, stderr
    assert stdout.strip() == str(target)
    assert "tower: pre-training" not in stderr  # it found the entry whole and did not train again
    assert json.loads((target / smol.CACHE_FILE).read_text())["config_digest"] == TowerConfig(**MICRO).digest()
    assert not list(tmp_path.glob(f".{target.name}.tmp-*"))  # no partial entry left by either
