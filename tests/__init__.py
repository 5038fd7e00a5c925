"""The test suite, a package run from the repository root (``make test``, or
``.venv/bin/python -m pytest tests/test_values.py``); it imports the installed
``entroloss``, never ``src/`` (``test_package.py`` checks).

- ``conftest.py``: the platform fixtures ``backend``, ``torch_backend``, ``jax_backend``;
- ``helpers/platforms.py``: the (platform, dtype) parameters that exist, skip marks with
  reasons for what cannot run here, ``needs(module)``;
- ``helpers/assertions.py``: ``tolerance`` per dtype and ``assert_close``;
- ``helpers/cases.py``: the grid of random cases over every loss, target and option;
- ``helpers/reliability.py``: every way a backend differentiates, and the known rounding
  error that test_fuzz.py and test_extremes.py allow;
- ``helpers/distributed.py``: the global-mean recipe, the DDP ranks (spawned once for
  test_distributed.py and test_linear_distributed.py) and JAX on several host devices;
- the float64 reference and the one finite-difference helper ship with the package, as
  ``entroloss.tools.reference`` (``entroloss verify`` uses them too).
"""
