"""Capture intermediate tensors of a model with forward hooks, inside a context manager.

Hooks are registered on ``__enter__`` and removed on ``__exit__``; records are cleared on entry, so
nothing leaks from one training step to the next and nothing is recorded outside the context.
"""

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional

from torch import nn

__all__ = ["ForwardRecorder", "get_submodule", "record_calls"]


@contextmanager
def record_calls(obj: Any, method: str) -> Iterator[List[Any]]:
    """Record what ``obj.<method>`` returns while the context is open, in call order.

    The method runs exactly once per call, as without the context (so a method that samples at
    random, such as ``roi_heads.label_and_sample_proposals``, is not run twice). The instance
    attribute that shadows the class's method is removed on exit.

    Yields:
        the list the return values are appended to.
    """
    original = getattr(obj, method)
    sink: List[Any] = []

    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        sink.append(result)
        return result

    setattr(obj, method, recording)
    try:
        yield sink
    finally:
        delattr(obj, method)  # back to the class's method


def get_submodule(model: nn.Module, path: str) -> Optional[nn.Module]:
    """``model.get_submodule(path)``, or None when the path does not exist."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


class ForwardRecorder:
    """Record the outputs (or positional inputs) of named submodules during a forward pass.

    A submodule called several times (e.g. a head tower applied to each FPN level) yields one
    record per call, in call order.

    Example::

        rec = ForwardRecorder(model, outputs={"cls": "head.cls_subnet"})
        with rec:
            model.head(features)
        rec["cls"]  # list with one (N, C, Hi, Wi) tensor per level

    Args:
        model: the model owning the submodules.
        outputs: record name -> dotted submodule path whose outputs are recorded.
        inputs: record name -> dotted submodule path whose positional inputs (a tuple) are
            recorded.
    """

    def __init__(
        self,
        model: nn.Module,
        outputs: Optional[Dict[str, str]] = None,
        inputs: Optional[Dict[str, str]] = None,
    ):
        self._targets = []
        for kind, mapping in (("output", outputs or {}), ("input", inputs or {})):
            for name, path in mapping.items():
                module = get_submodule(model, path)
                if module is None:
                    raise KeyError(f"{type(model).__name__} has no submodule '{path}' to record")
                self._targets.append((kind, name, module))
        self._handles: List[Any] = []
        self.records: Dict[str, List[Any]] = {}

    def __enter__(self) -> "ForwardRecorder":
        self.records = {name: [] for _, name, _ in self._targets}
        for kind, name, module in self._targets:
            if kind == "output":
                handle = module.register_forward_hook(self._output_hook(name))
            else:
                handle = module.register_forward_pre_hook(self._input_hook(name))
            self._handles.append(handle)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _output_hook(self, name: str):
        def hook(module, args, output):
            self.records[name].append(output)

        return hook

    def _input_hook(self, name: str):
        def hook(module, args):
            self.records[name].append(args)

        return hook

    def __getitem__(self, name: str) -> List[Any]:
        return self.records[name]
