"""Text frontend: normalisation, sentence splitting for streaming, and phonemes
(English through espeak-ng, Mandarin through pypinyin)."""
