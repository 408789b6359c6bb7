"""From a data config to tokenised features.

    train, dev, stats = load_examples(cfg.data)           # raw SQuAD-style examples (files, hub or generated)
    train_features = prepare_train_features(train, tokenizer, cfg.data.max_seq_length, cfg.data.doc_stride)
    dev_features = prepare_eval_features(dev, tokenizer, cfg.data.max_seq_length, cfg.data.doc_stride)

Every problem with the data is a DataError (a ValueError) with a one-line message; skipped records (data.strict=false)
are logged on logger "experiments.data" and counted in stats.
"""
from .errors import DataError
from .features import FEATURES_VERSION, prepare_eval_features, prepare_train_features
from .loading import load_examples

__all__ = ["DataError", "FEATURES_VERSION", "load_examples", "prepare_eval_features", "prepare_train_features"]
