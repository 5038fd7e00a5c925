"""The command-line tools (``entroloss verify | bench | demo``) and what they share.

Nothing here is imported by ``import entroloss``: these modules import the frameworks they
run on. ``platforms`` is the table of array libraries and devices, ``reference`` the
independent float64 reference, ``training`` the pieces the training scripts share.
"""
