"""Running `edgescale batch` and `edgescale bench` on a Ray cluster (``--ray``).

Optional: needs ``pip install 'edgescale[cluster]'``; nothing outside this package
imports Ray, and this package imports it only when a job asks for a cluster.
"""
