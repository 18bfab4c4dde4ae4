"""Checks that an installed Aster can do what its container image is for.

Run by k8s/Dockerfile in the builder stage, after `pip install .`, and by
tests/k8s against the development venv:

- `aster edge` (the image run with Docker or Compose; the Kubernetes edge
  runs Envoy on a config rendered ahead, k8s/base/edge): the Envoy config
  renders for the Kubernetes settings (upstreams on the headless Service) and
  `envoy --mode validate` accepts it;
- `aster serve` / `aster db upgrade`: the migrations and the descriptor set
  Envoy loads are installed, and the `aster` console script is there.

The Envoy template ships in the package (`aster.envoy`), so a non-editable
install renders the edge config too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Edge settings of k8s/base/edge/settings.env that shape the config.
EDGE_ENV = {
    "ASTER_UPSTREAMS": "aster-server-headless:50051",
    "ASTER_HTTP_HOST": "0.0.0.0",
    "ASTER_HTTP_PORT": "8080",
}


def check_edge(envoy: Path) -> None:
    """Renders the edge config as `aster edge` would and validates it."""
    from aster.server.config import Settings
    from aster.server.edge.render import descriptor_path, edge_config
    from aster.server.edge.runner import write_config

    assert descriptor_path().is_file(), f"descriptor set missing: {descriptor_path()}"
    with tempfile.TemporaryDirectory() as data_dir:
        values = {k.removeprefix("ASTER_").lower(): v for k, v in EDGE_ENV.items()}
        settings = Settings.model_validate({**values, "data_dir": data_dir})
        path = write_config(edge_config(settings), settings.data_dir / "edge")
        result = subprocess.run(
            [str(envoy), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise SystemExit(f"image_check: envoy rejected the edge config:\n{result.stderr}")


def check_server() -> None:
    """The migrations are installed and name a head revision."""
    from aster.server.storage import migrate

    print(f"image_check: migrations head {migrate.head_revision()}")


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args()
    # The check uses EDGE_ENV alone, whatever this process inherited.
    for name in [n for n in os.environ if n.startswith("ASTER_")]:
        del os.environ[name]
    bin_dir = Path(sys.executable).parent
    for script in ("aster", "envoy"):
        if not (bin_dir / script).exists():
            raise SystemExit(f"image_check: {bin_dir / script} is missing")
    check_server()
    check_edge(bin_dir / "envoy")
    print("image_check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
