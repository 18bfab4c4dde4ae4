"""Maps the repository layout onto the `aster.*` import names.

`pyproject.toml` holds all metadata. This file only exists because setuptools
cannot express "every subpackage of server/ is aster.server.<name>" statically.
"""

from setuptools import find_packages, setup

ROOTS = {
    "aster.v1": "gen/python/aster/v1",
    "aster.server": "server",
    "aster.client": "clients/python",
    # Data only: the Envoy template that `aster edge` renders.
    "aster.envoy": "envoy",
}

package_dir: dict[str, str] = {}
for prefix, root in ROOTS.items():
    package_dir[prefix] = root
    for sub in find_packages(root):
        package_dir[f"{prefix}.{sub}"] = f"{root}/{sub.replace('.', '/')}"

setup(packages=sorted(package_dir), package_dir=package_dir)
