"""Generated reviews of IMDB's shape: a text classifier's data, offline.

Keras's and TensorFlow's text tutorials train on IMDB's movie reviews, which cannot be
downloaded here. These reviews keep what sets such data apart for an optimizer:
- a vocabulary of `VOCABULARY` word ids with Zipf's frequencies (id 1 the most common), so
  that an `Embedding` row of most words gets a gradient in few steps;
- reviews of a few hundred words (lengths log-normal about 200), padded with 0 at the end
  to `LENGTH` ids, the tutorial's sequence length;
- a label that few words carry and none decides: a word of the review is one of the
  `SENTIMENT_WORDS` of the review's class with probability `SENTIMENT_RATE x AGREEMENT`,
  and one of the other class's with `SENTIMENT_RATE x (1 - AGREEMENT)`; the sentiment words
  are drawn among all but the 50 most common, so many are rare.
A model can then fit its training reviews by their rare words well before it stops learning
what holds on others, as on IMDB: the tutorial's model trained by `Adam()` reaches about 83%
held-out accuracy here after 10 epochs (IMDB: 87%), its training loss (the epoch's mean,
under dropout) below the held-out one from the fourth epoch
(`experiments/results/keras_fit_reviews.md`).
"""

import numpy as np

VOCABULARY = 10000  # word ids 1..9999; 0 pads (the tutorial's max_features)
LENGTH = 250  # ids per review (the tutorial's sequence_length)
SENTIMENT_WORDS = 200  # words of each class
SENTIMENT_RATE = 0.05  # the chance that a word is a sentiment word
AGREEMENT = 0.7  # the chance that a sentiment word is of the review's own class
COMMON_WORDS = 50  # the most common ids, never sentiment words


def make_reviews(n_samples, random_state):
    """`(x, y)`: `x` [n_samples, LENGTH] int32 word ids (0 after a review's end), `y`
    [n_samples] int32 classes 0 and 1, drawn with `numpy.random.default_rng(random_state)`."""
    rng = np.random.default_rng(random_state)
    words = np.arange(1, VOCABULARY)
    frequency = 1.0 / (words + 2.7)  # Zipf-Mandelbrot: the shape of word counts in text
    frequency /= frequency.sum()
    sentiment = rng.permutation(words[COMMON_WORDS:])[:2 * SENTIMENT_WORDS].reshape(
        2, SENTIMENT_WORDS)
    y = rng.integers(0, 2, n_samples).astype(np.int32)
    lengths = np.clip(rng.lognormal(np.log(200), 0.5, n_samples).astype(int), 20, LENGTH)
    x = np.zeros((n_samples, LENGTH), np.int32)
    for i, (label, length) in enumerate(zip(y, lengths)):
        review = rng.choice(words, size=length, p=frequency)
        is_sentiment = rng.random(length) < SENTIMENT_RATE
        of_class = np.where(rng.random(length) < AGREEMENT, label, 1 - label)
        sentiment_word = sentiment[of_class, rng.integers(0, SENTIMENT_WORDS, length)]
        x[i, :length] = np.where(is_sentiment, sentiment_word, review)
    return x, y
