"""A griffe extension for the API reference: the functions entroloss generates at import
from its registry (``entroloss.<loss>``, ``entroloss.linear_<loss>``, set in
``entroloss._api``, ``entroloss._linear`` and the package itself) do not exist, or are
attributes without a docstring, to griffe's static reading. Each name of the modules below
that is a function (or a torch module class) at run time gets its inspected form (the
signature and docstring the user sees); every other object keeps the static reading, which
shows ``math.e`` and the type aliases as written.
"""

from __future__ import annotations

import griffe

MODULES_WITH_GENERATED_FUNCTIONS = ("entroloss", "entroloss._api", "entroloss._linear",
                                    "entroloss.backends.torch", "entroloss.backends.torch_modules")


class GeneratedFunctions(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        for path in MODULES_WITH_GENERATED_FUNCTIONS:
            package, _, module_name = path.partition(".")
            if pkg.path != package:
                continue
            static = pkg[module_name] if module_name else pkg
            inspected = griffe.inspect(path, docstring_parser=loader.docstring_parser,
                                       docstring_options=loader.docstring_options)
            for name, runtime in inspected.members.items():
                member = static.members.get(name)
                if member is None and not name.startswith("_"):
                    static.set_member(name, runtime)  # set at import: the function or an alias
                elif (member is not None and not member.is_alias and member.is_attribute
                      and not runtime.is_alias and (runtime.is_function or runtime.is_class)):
                    static.set_member(name, runtime)
