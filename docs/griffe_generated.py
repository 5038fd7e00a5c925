"""A griffe extension for the API reference: the functions that entroloss generates at
import (``linear_cross_entropy = _make(...)`` in ``entroloss._linear``) are, to griffe's
static reading, attributes without a docstring. Each attribute of the modules below that
is a function at run time is replaced by its inspected form (the signature and docstring
the user sees); every other object keeps the static reading, which shows ``math.e`` and
the type aliases as written.
"""

from __future__ import annotations

import griffe

MODULES_WITH_GENERATED_FUNCTIONS = ("entroloss._linear",)


class GeneratedFunctions(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        for path in MODULES_WITH_GENERATED_FUNCTIONS:
            package, _, module_name = path.partition(".")
            if pkg.path != package:
                continue
            static = pkg[module_name]
            inspected = griffe.inspect(path, docstring_parser=loader.docstring_parser,
                                       docstring_options=loader.docstring_options)
            for name, member in list(static.members.items()):
                runtime = inspected.members.get(name)
                if member.is_alias or runtime is None or runtime.is_alias:
                    continue  # imports: never resolved here
                if member.is_attribute and runtime.is_function:
                    static.set_member(name, runtime)
