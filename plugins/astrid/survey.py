"""Seed a synthetic night: generate observations, write them to storage, register them.

This is what `astrid seed` and `make demo` run, and what the DAG tests seed their catalogs with.
Generation is deterministic from ``seed`` (observation ``i`` uses ``seed + i``), and registering
the same names again is a no-op, so seeding is idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from astrid.logs import log_event


@dataclass
class SeedResult:
    observation_ids: list[int]
    catalog_url: str
    storage_uri: str


def seed_survey(
    count: int,
    *,
    labelled: int = 0,
    size: int = 2048,
    seed: int = 0,
    catalog_url: str | None = None,
    storage_root: Any = None,
    prefix: str = "obs",
    progress: bool = False,
    **knobs: Any,
) -> SeedResult:
    """Generate ``count`` observations (the first ``labelled`` keep their truth for validation)."""
    from astrid.catalog import Catalog, NewObservation
    from astrid.imaging.synthetic import make_observation, write_observation
    from astrid.paths import default_catalog_url, default_storage_uri
    from astrid.storage import StorageRoot

    if count < 0 or labelled < 0 or labelled > count:
        raise ValueError(f"seed: need 0 <= labelled ({labelled}) <= count ({count})")
    catalog_url = catalog_url or default_catalog_url()
    storage = (
        storage_root
        if isinstance(storage_root, StorageRoot)
        else StorageRoot.from_uri(storage_root or default_storage_uri())
    )
    catalog = Catalog(catalog_url)
    catalog.migrate()
    records = []
    iterator = range(count)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="seeding observations", unit="obs")
    for i in iterator:
        obs = make_observation(seed + i, size=size, **knobs)
        name = f"{prefix}-{seed + i:06d}"
        uris = write_observation(obs, storage.path / "observations", name)
        is_labelled = i < labelled
        h = obs.header
        records.append(
            NewObservation(
                name=name,
                survey=str(h.get("SURVEY", "SYNTH")),
                instrument=str(h.get("INSTRUME", "synthetic")),
                filter=str(h.get("FILTER", "r")),
                mjd=float(h.get("MJD-OBS", 0.0)),
                exptime=float(h.get("EXPTIME", 0.0)),
                ra_center=float(h.get("CRVAL1", 0.0)),
                dec_center=float(h.get("CRVAL2", 0.0)),
                science_uri=storage.uri_for(uris["science_uri"]),
                reference_uri=storage.uri_for(uris["reference_uri"]),
                difference_uri=storage.uri_for(uris["difference_uri"]),
                truth_uri=storage.uri_for(uris["truth_uri"]) if is_labelled else None,
                labelled=is_labelled,
            )
        )
    # Labelled observations are the validation set: registered but kept out of the inference queue.
    ids = catalog.register([r for r in records if not r.labelled])
    ids += catalog.register([r for r in records if r.labelled], status="ingested")
    log_event(
        "survey.seeded", count=count, labelled=labelled, size=size, seed=seed, catalog=_redacted(catalog_url)
    )
    return SeedResult(observation_ids=ids, catalog_url=_redacted(catalog_url), storage_uri=str(storage.path))


def _redacted(url: str) -> str:
    """The URL with its password masked: seeding output ends up in terminals and CI logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
