"""Ground-truth labels of the world's SFT records (``sft_meta.jsonl``).

The generator (:mod:`qtbench.world.generate`) plants them; the report
(:mod:`qtbench.report.noise`) scores each method's drop decisions against them.
Each record's ``noise`` is null or one of :data:`NOISE_TYPES`.
"""

#: The kinds of planted noise, in the order the generator draws them.
NOISE_TYPES = ("random", "wrong_answer", "truncated", "refusal")

#: Every label a record can carry: clean, a noise type, or ``duplicate``.
RECORD_LABELS = ("clean", *NOISE_TYPES, "duplicate")


def record_label(meta: dict, where: str = "sft_meta.jsonl") -> str:
    """One meta row's label: its ``noise`` type, else ``duplicate`` when it names
    ``duplicate_of`` (the copy; the original stays clean), else ``clean`` - the
    same rule as :func:`qtbench.report.noise.label_meta`.  ``where`` names the
    row in the error of a row without the two keys or with an unknown noise type."""
    missing = [key for key in ("noise", "duplicate_of") if key not in meta]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing} (expected the world's sft_meta.jsonl)")
    noise = meta["noise"]
    if noise:
        if noise not in NOISE_TYPES:
            raise ValueError(f"{where}: unknown noise type {noise!r}; known: {', '.join(NOISE_TYPES)}")
        return str(noise)
    return "duplicate" if meta["duplicate_of"] is not None else "clean"


def labels_for_records(meta_rows: list[dict], kept_raw: list[int], source: str) -> list[str]:
    """The label of each loaded record, in order: ``kept_raw[j]`` is the position
    in the data file of the ``j``-th record the loader kept (bad records skipped,
    ``max_records`` cut).  Meta rows are matched by their ``index`` key, which
    must number the file's records 0..M-1; a record without a row is an error
    naming ``source`` (the meta file)."""
    by_index: dict[int, dict] = {}
    for line, row in enumerate(meta_rows, start=1):
        if "index" not in row:
            raise ValueError(f"{source}: line {line} has no 'index' key (expected the world's sft_meta.jsonl)")
        by_index[int(row["index"])] = row
    if sorted(by_index) != list(range(len(meta_rows))):
        raise ValueError(f"{source}: the 'index' keys do not number the records 0..{len(meta_rows) - 1}")
    out = []
    for position in kept_raw:
        if position not in by_index:
            raise ValueError(f"{source}: {len(meta_rows)} metadata rows, but the data has a record at position "
                             f"{position}: the meta file does not belong to this data")
        out.append(record_label(by_index[position], f"{source}: record {position}"))
    return out
