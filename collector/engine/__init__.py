"""Faust-free stream logic: decide, fold, flush, merge; testable without a broker."""
