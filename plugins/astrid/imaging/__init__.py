"""Imaging: FITS + WCS I/O (:mod:`astrid.imaging.fits`) and the deterministic synthetic survey
(:mod:`astrid.imaging.synthetic`). Import the submodules directly; nothing here imports Airflow."""
