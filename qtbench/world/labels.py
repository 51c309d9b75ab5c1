"""Ground-truth labels of the world's SFT records (``sft_meta.jsonl``).

The generator (:mod:`qtbench.world.generate`) plants them; the report
(:mod:`qtbench.report.noise`) scores each method's drop decisions against them.
Each record's ``noise`` is null or one of :data:`NOISE_TYPES`.
"""

#: The kinds of planted noise, in the order the generator draws them.
NOISE_TYPES = ("random", "wrong_answer", "truncated")
