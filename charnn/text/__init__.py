"""Tokenizers: characters and sentencepiece subwords, behind one interface (encode, decode, vocab_size, state)."""
