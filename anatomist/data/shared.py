"""Where the real public datasets live: `../shared/data` beside the repository.

`ANATOMIST_SHARED_DATA` overrides it; otherwise the folder beside the repository, then the one
beside the current directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from anatomist.errors import AnatomistError

HH_NAME = "hh-rlhf-harmless-base-test-dev.jsonl.gz"


def shared_data_dir() -> Path:
    env = os.environ.get("ANATOMIST_SHARED_DATA")
    candidates = [Path(env)] if env else [Path(__file__).resolve().parents[3] / "shared" / "data",
                                          Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if (c / HH_NAME).is_file():
            return c
    raise AnatomistError(f"cannot find {HH_NAME}: looked in {', '.join(map(str, candidates))} "
                         "(set ANATOMIST_SHARED_DATA)")
