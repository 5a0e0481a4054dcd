"""Integrations with other training frameworks (optional extras).

* ``reste.integrations.lightning.BinarizationCallback`` (``pip install 'reste[lightning]'``).

Nothing here is imported by ``import reste``; each module imports its framework
itself and says how to install it when it is missing.
"""
