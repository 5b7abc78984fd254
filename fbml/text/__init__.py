"""Text: tokens, vocabularies, word vectors and the label codec."""
