"""python -m edgescale.cli"""

from edgescale.cli.app import entry

entry()
