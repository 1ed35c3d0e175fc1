"""Make ``ansible_collections.kvm.live_migration`` importable from a plain checkout.

The collection's code imports itself as ``ansible_collections.kvm.live_migration``, which only
resolves when the working tree sits at ``<dir>/ansible_collections/kvm/live_migration``. A clone
can live anywhere, so this builds that layout as a symlink farm,
``<tmpdir>/kvmlm-pytest-<uid>/ansible_collections/kvm/live_migration -> <this repository>``, and
puts ``<tmpdir>/kvmlm-pytest-<uid>`` first on ``sys.path``. pytest imports this file before any
test module, so every test sees the collection of the checkout it was started from.

Two checkouts tested at the same time by one user share the farm, and each repoints the link.
That is harmless: once the package is imported here its ``__path__`` is pinned to this checkout,
so the link is never followed again by this process.
"""

from __future__ import annotations

import importlib
import os
import stat
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
COLLECTION = "ansible_collections.kvm.live_migration"


def _private_dir(path):
    """Create ``path`` (mode 0700) or accept it only when it is our own directory others cannot write."""
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise RuntimeError(f"{path} is not a directory owned by uid {os.getuid()} and writable only by it; "
                           "remove it and run pytest again")


def collection_farm(repo_root=REPO_ROOT, tmpdir=None):
    """Return the farm directory whose ansible_collections/kvm/live_migration links to ``repo_root``."""
    farm = Path(tmpdir or tempfile.gettempdir()) / f"kvmlm-pytest-{os.getuid()}"
    _private_dir(farm)
    namespace = farm / "ansible_collections" / "kvm"
    namespace.mkdir(parents=True, exist_ok=True)
    link = namespace / "live_migration"
    if not (link.is_symlink() and Path(os.readlink(link)) == repo_root):
        # Replace atomically, so a concurrent run never sees the link missing.
        staging = namespace / f".live_migration.{os.getpid()}"
        staging.unlink(missing_ok=True)
        staging.symlink_to(repo_root, target_is_directory=True)
        os.replace(staging, link)
    return farm


def _import_collection(repo_root=REPO_ROOT):
    farm = str(collection_farm(repo_root))
    if farm in sys.path:
        sys.path.remove(farm)
    sys.path.insert(0, farm)
    package = importlib.import_module(COLLECTION)
    # A namespace package (the repository root has no __init__.py): point it straight at this
    # checkout so later imports of plugins.* never go through the shared symlink again.
    package.__path__ = [str(repo_root)]
    return package


_import_collection()
