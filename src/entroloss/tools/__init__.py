"""The command-line tools (``entroloss verify | bench | demo``) and what they share.

Nothing here is imported by ``import entroloss``: these modules import the frameworks they
run on. Each tool takes its list of losses from the registry, ``entroloss._losses``.

- ``verify``, ``bench``, ``demo``: the three commands;
- ``platforms``: the table of array libraries and devices they run on;
- ``reference``: the independent float64 reference ``verify`` measures against;
- ``training``: the model, training loop, data and metrics ``demo`` and the scripts of
  ``benchmarks/training`` share (public: the scripts import it);
- ``progress``: the one progress bar;
- ``memory_probe``: ``bench --memory``'s measurement, a process per figure.
"""
