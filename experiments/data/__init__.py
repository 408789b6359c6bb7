"""From a data config to tokenised features.

    train, dev, stats = load_examples(cfg.data)           # raw SQuAD-style examples (files, hub or generated)
    train, dev, train_features, dev_features = prepare_features(cfg.data, tokenizer, train, dev, stats)
    print(describe_data(stats))                           # one line: the data actually used

`prepare_train_features` / `prepare_eval_features` are the tokenising steps on their own (no skipping).
Every problem with the data is a DataError (a ValueError) with a one-line message; skipped records (data.strict=false)
are logged on logger "experiments.data" and counted in stats.
"""

from .errors import DataError
from .features import FEATURES_VERSION, TokenisationFaults, prepare_eval_features, prepare_train_features
from .loading import describe_data, load_examples, prepare_features

__all__ = [
    "DataError",
    "FEATURES_VERSION",
    "TokenisationFaults",
    "describe_data",
    "load_examples",
    "prepare_eval_features",
    "prepare_features",
    "prepare_train_features",
]
