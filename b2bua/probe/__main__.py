"""``python -m b2bua.probe``: see :mod:`b2bua.probe.cli`."""

from b2bua.probe.cli import main

main()
