"""Imaging: FITS + WCS I/O (:mod:`astrid.imaging.fits`), injected-transient truth
(:mod:`astrid.imaging.truth`) and the deterministic synthetic survey
(:mod:`astrid.imaging.synthetic`). Import the submodules directly; nothing here imports Airflow."""
