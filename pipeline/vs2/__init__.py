"""The VideoScore2 fidelity contract: frame sampling, prompt templates, chat rendering, the official score regex and the normed soft score. Changing any of these changes every score."""
