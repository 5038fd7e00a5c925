"""The loss math, written once against the Python array API standard.

Everything here takes the array namespace ``xp`` first and uses only standard functions
on it: no NumPy, torch or JAX calls and no Python loops over samples (the tests run it on
``array_api_strict``). Arrays are not written in place, except buffers this code
allocated itself where the namespace allows it (the chunked backward's gradient), and
what a library's native kernels do inside their own buffers.

One concern per file:

- ``primitives.py``: row maximum, log-normaliser, log p, ``softmax_affine``, ... and the
  typed :class:`Kernels` table through which a library supplies native versions;
- ``target.py``: the target as class weights times a distribution;
- ``terms.py``: each term (cross entropy / focal, entropy, reverse cross entropy), its
  value and its gradient side by side;
- ``positions.py``: the loss and its gradients at every position;
- ``passes.py``: :func:`forward` and :func:`backward` (reductions, cotangents);
- ``chunks.py``: the same, a chunk of rows at a time (bounded memory);
- ``chunking.py``: how rows are split into chunks (the one chunk plan of every user);
- ``linear.py``: a linear head and a loss, a chunk of logits at a time;
- ``spec.py``: :class:`Spec`, :class:`Scalars`, :class:`Inputs` and :class:`Residuals`;
- ``arrays.py``: which library an array belongs to, its device, whether it is written in
  place (the one place that tells libraries apart; ``entroloss._arrays`` builds on it).

Nothing here imports from the package above ``_math``.

The adapters in ``entroloss.backends`` attach ``forward``/``backward`` to each framework's
autograd; none of them re-derives anything. ``docs/math.md`` derives every gradient.
"""

from .passes import backward, forward
from .primitives import (GENERIC, Kernels, compute_dtype, entropy, ln, log_p_floor, log_softmax,
                         soft_cap, softmax)
from .spec import ClassSlice, Gradients, Inputs, Residuals, Scalars, Spec

__all__ = ["Spec", "ClassSlice", "Scalars", "Inputs", "Residuals", "Gradients", "Kernels",
           "GENERIC", "forward", "backward", "log_softmax", "softmax", "entropy", "soft_cap",
           "compute_dtype", "ln", "log_p_floor"]
