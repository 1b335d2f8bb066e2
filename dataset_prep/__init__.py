"""Amazon review data (2014, 2018, 2023 releases) and UniSRec-format data -> RecBole atomic files.

Command line: ``srt-prep`` / ``python -m dataset_prep`` (:mod:`dataset_prep.cli`). Modules, one job each:
``registry`` (categories, file names, URLs), ``formats`` (record layouts), ``streams`` (incremental,
truncation-tolerant line reading), ``readers`` (one parser per format), ``timestamps`` (unit and
plausibility checks), ``text`` (cleaning), ``engine`` (DuckDB, out of core within a memory limit),
``table`` (the interactions in the engine, interned), ``filters``, ``atomic`` (folder swap, manifest,
dataset YAML), ``report``, ``convert``, ``download``, ``unisrec``.
"""
