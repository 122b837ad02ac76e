"""Old command of the Meta-LSTM benchmark: ``python -m fewshot.metalstm.bench ...`` runs
``python -m benchmarks.meta_lstm ...`` (the benchmarks live in the checkout's ``benchmarks/``)."""

import sys

try:
    from benchmarks.meta_lstm import main
except ImportError as error:  # an installed wheel has no benchmarks/
    raise SystemExit(
        f"The Meta-LSTM benchmark moved to benchmarks/meta_lstm.py and is not importable here ({error}); "
        "run `python -m benchmarks.meta_lstm` from the repository's root."
    ) from error

if __name__ == "__main__":
    sys.exit(main())
