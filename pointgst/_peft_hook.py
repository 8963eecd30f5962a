"""Register pointgst's peft method the moment peft is imported, without importing peft (slow) ourselves.

``import pointgst`` installs this finder; when any code imports ``peft``, the method is registered right after
peft's own initialisation, so ``PeftModel.from_pretrained`` works on a pointgst adapter in a fresh process.
"""

import importlib.abc
import importlib.util
import sys


class _RegisterAfterPeftImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname != "peft":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec("peft")
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        import pointgst.tuner  # noqa: F401  (registers the method)


def install() -> None:
    if "peft" in sys.modules:
        import pointgst.tuner  # noqa: F401
    elif not any(isinstance(f, _RegisterAfterPeftImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterPeftImport())
