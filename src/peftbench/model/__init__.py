"""Models: loading, one layout class per model kind (causal, seq2seq), one record per architecture family."""
