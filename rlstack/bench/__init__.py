"""The benchmarks, one module each: ``rlstack bench <module name with - for _>`` runs its ``main``."""
