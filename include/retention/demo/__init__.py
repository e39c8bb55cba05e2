"""Demo databases for the default policy: schemas (``schema``) and a deterministic seed (``seed``)."""
