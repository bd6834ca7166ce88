"""Fetch batch-inference 1.0 for the side-by-side rows of the accelerator page.

``python tools/fetch_v1.py DIR`` downloads the ``batch-inference==1.0`` wheel from the
package index (``pip download --no-deps``) and unpacks it into ``DIR``, so that
``BATCH_INFERENCE_V1_PATH=DIR`` lets the page run 1.0 in a subprocess (its package
installs under our name, so it is never installed). 1.0's own dependencies
(``filelock``, ``grpcio``, ``msgpack``, ``msgpack-numpy``, ``protobuf``) come from the
``tox -e docs`` environment. When the download fails (no index), it says so and
exits 0: the page then skips the 1.0 rows and prints why.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def main() -> int:
    target = Path(sys.argv[1])
    if (target / "batch_inference" / "__init__.py").is_file():
        print(f"batch-inference 1.0 already in {target}")
        return 0
    with tempfile.TemporaryDirectory() as download:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "-d", download, "batch-inference==1.0"],
            capture_output=True, text=True, timeout=300, check=False,
        )
        wheels = list(Path(download).glob("batch_inference-1.0-*.whl"))
        if done.returncode != 0 or not wheels:
            print("batch-inference 1.0 could not be fetched; its rows will be skipped:\n"
                  + done.stderr.strip()[-500:])
            return 0
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extractall(target)
    print(f"batch-inference 1.0 unpacked into {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
