"""The graph passes. Importing this package registers every pass module in it.

Pass modules sit here directly or in subpackages (qdq/, prune/, sparsify/); a subpackage's
modules are imported too, so a pass registers wherever it lives.
"""

import importlib
import pkgutil

for _module in pkgutil.walk_packages(__path__, prefix=f"{__name__}."):
    if not _module.name.rsplit(".", 1)[-1].startswith("_"):
        importlib.import_module(_module.name)
